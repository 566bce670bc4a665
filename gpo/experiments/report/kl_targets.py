"""The report's KL-targeted training section (docs/kl-control.md): how close each controlled run
ended to its target, its win rate against the fixed-beta runs at the same KL, and the final
beta each loss needed against the prediction of :func:`gpo.losses.analysis.equivalent_beta`."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections import defaultdict
from typing import Any

from gpo.experiments.report.collect import RunData, finite
from gpo.losses.analysis import equivalent_beta

#: A controlled run "tracks" when its final KL is within this relative distance of its target.
TOLERANCE = 0.25


def controlled(runs: list[RunData]) -> list[RunData]:
    return [r for r in runs if r.config.get("kl_target") is not None]


def fixed(runs: list[RunData]) -> list[RunData]:
    return [r for r in runs if r.config.get("kl_target") is None]


def _final(r: RunData, key: str) -> float | None:
    """``final_<key>`` from the run's summary, else the last logged ``kl_control/<key>``."""
    summary = r.dir / "summary.json"
    if summary.is_file():
        value = json.loads(summary.read_text()).get(f"final_{key}")
        if value is not None:
            return float(value)
    values = [x[f"kl_control/{key}"] for x in r.control if f"kl_control/{key}" in x]
    return values[-1] if values else None


def tracking_rows(runs: list[RunData]) -> list[dict[str, Any]]:
    """One row per controlled run: target, final KL (+- SE), within tolerance, final beta, win
    rate; ``diverged`` for a run that stopped early or ended with a non-finite KL or beta."""
    rows = []
    for r in controlled(runs):
        last = r.evals[-1] if r.evals else {}
        target = float(r.config["kl_target"])
        kl, beta = last.get("eval/kl"), _final(r, "beta")
        ok = finite(kl) and finite(beta)
        rows.append(
            {
                "name": r.name,
                "loss": r.config["loss"],
                "seed": r.config.get("seed"),
                "kl_target": target,
                "kl": kl,
                "kl_se": last.get("eval/kl_se"),
                "kl_samples": r.config.get("kl_prompts", 0) * r.config.get("kl_samples", 0),
                "relative_error": kl / target - 1 if ok else None,
                "within": ok and abs(kl / target - 1) <= TOLERANCE,
                "final_beta": beta,
                "final_lr_scale": _final(r, "lr_scale"),  # None: a run from before the brake
                "win_rate": last.get("eval/win_rate"),
                "win_rate_se": last.get("eval/win_rate_se"),
                "diverged": not (r.finished and ok),
            }
        )
    return rows


def frontier_at(points: list[tuple[float, float, float]], kl: float) -> tuple[float, float] | None:
    """The fixed-beta runs' win rate at ``kl``: linear in log KL between the two runs whose final
    KLs bracket it (``points``: (KL, win rate, SE)); the SE combines theirs with the same
    weights. None outside their range (no extrapolation)."""
    pts = sorted(p for p in points if finite(p[0]) and p[0] > 0 and finite(p[1]))
    if not (finite(kl) and kl > 0):
        return None
    for (k0, w0, s0), (k1, w1, s1) in itertools.pairwise(pts):
        if k0 <= kl <= k1:
            t = 0.0 if k1 == k0 else (math.log(kl) - math.log(k0)) / (math.log(k1) - math.log(k0))
            return (1 - t) * w0 + t * w1, math.hypot((1 - t) * s0, t * s1)
    return None


def fixed_points(runs: list[RunData]) -> dict[str, list[tuple[float, float, float]]]:
    """Per loss, the fixed-beta runs' final (KL, win rate, SE)."""
    out: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for r in fixed(runs):
        last = r.evals[-1] if r.evals else {}
        kl, wr = last.get("eval/kl"), last.get("eval/win_rate")
        if finite(kl) and finite(wr):
            out[r.config["loss"]].append((kl, wr, last.get("eval/win_rate_se", 0.0)))
    return out


def equal_kl_rows(rows: list[dict[str, Any]], frontier: dict[str, list]) -> list[dict[str, Any]]:
    """Each controlled run's win rate next to its loss's fixed-beta curve at the run's KL."""
    out = []
    for row in rows:
        at = frontier_at(frontier.get(row["loss"], []), row["kl"])
        wr = row["win_rate"]
        out.append(
            {
                "name": row["name"],
                "loss": row["loss"],
                "kl": row["kl"],
                "win_rate": wr,
                "win_rate_se": row["win_rate_se"],
                "fixed_beta_win_rate": at[0] if at else None,
                "fixed_beta_win_rate_se": at[1] if at else None,
                "difference": wr - at[0] if at and finite(wr) else None,
            }
        )
    return out


def equal_kl_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean difference (controlled - fixed-beta) over the runs that have both, and the mean SE
    of the fixed-beta curve there: the acceptance is ``mean_difference >= -mean_se``."""
    both = [r for r in rows if r["difference"] is not None]
    if not both:
        return {"runs": 0, "mean_difference": None, "mean_fixed_beta_se": None}
    return {
        "runs": len(both),
        "mean_difference": statistics.fmean(r["difference"] for r in both),
        "mean_fixed_beta_se": statistics.fmean(r["fixed_beta_win_rate_se"] for r in both),
    }


def theory_rows(rows: list[dict[str, Any]], anchor: str = "logistic") -> list[dict[str, Any]]:
    """Per loss and target: the final beta measured, against ``equivalent_beta`` of the anchor
    loss's final beta (same target and seed); the ratio's geometric mean over seeds."""
    base = {(r["kl_target"], r["seed"]): r["final_beta"] for r in rows if r["loss"] == anchor}
    ratios: dict[tuple[str, float], list[float]] = defaultdict(list)
    for r in rows:
        b0 = base.get((r["kl_target"], r["seed"]))
        if b0 is None or not finite(r["final_beta"]) or r["diverged"]:
            continue
        try:
            predicted = equivalent_beta(b0, anchor, r["loss"])
        except ValueError:  # no equivalent beta (hinge: f''(0) = 0)
            predicted = None
        key = (r["loss"], r["kl_target"])
        ratios.setdefault(key, [])
        if predicted is not None:
            ratios[key].append(r["final_beta"] / predicted)
    out = []
    for (loss, target), values in sorted(ratios.items()):
        gm = math.exp(statistics.fmean(math.log(v) for v in values)) if values else None
        out.append({"loss": loss, "kl_target": target, "runs": len(values), "ratio": gm})
    return out


def kl_control_section(runs: list[RunData], frontier_runs: list[RunData]) -> dict[str, Any]:
    """Everything the report says about controlled runs (empty when there are none)."""
    rows = tracking_rows(runs)
    if not rows:
        return {}
    equal = equal_kl_rows(rows, fixed_points(fixed(runs) + fixed(frontier_runs)))
    return {
        "tolerance": TOLERANCE,
        "tracking": rows,
        "within": sum(r["within"] for r in rows),
        "diverged": sum(r["diverged"] for r in rows),
        "equal_kl": equal,
        "equal_kl_summary": equal_kl_summary(equal),
        "theory": theory_rows(rows),
    }
