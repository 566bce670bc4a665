"""Reading a sweep folder into per-run numbers: final metrics, peak win rate, median KL,
Spearman correlations, and the side-by-side matrix of final policies."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpo.eval.judges import parse_judge_spec, resolve_judge
from gpo.eval.win_rate import final_samples, win_rate
from gpo.experiments.sweep import RUNS_DIR
from gpo.io import redact_urls
from gpo.train.tracking import read_metrics

OFFLINE = "offline"


def run_kind(config: dict[str, Any]) -> str:
    """'offline', 'online' or 'IPO-MD A' (online from the geometric mixture with weight A)."""
    if not config.get("online"):
        return OFFLINE
    mixture = float(config.get("online_mixture") or 0.0)
    return f"IPO-MD {mixture:g}" if mixture else "online"


@dataclass
class RunData:
    name: str
    dir: Path
    config: dict[str, Any]
    evals: list[dict[str, Any]]  # records with eval metrics, by step
    train: list[dict[str, Any]]  # records with the train loss
    finished: bool
    control: list[dict[str, Any]]  # per-step records of KL-targeted training (beta, KL seen)

    @property
    def key(self) -> tuple[str, float]:
        return self.objective, float(self.config["beta"])

    @property
    def objective(self) -> str:
        """The loss, marked with the run's kind when it is online (:func:`run_kind`), so that
        every grouping of the report (seeds, figures, tables) keeps the kinds apart."""
        kind = run_kind(self.config)
        return str(self.config["loss"]) + ("" if kind == OFFLINE else f" {kind}")

    def series(self, name: str) -> list[float]:
        return [r[name] for r in self.evals if name in r]

    def pairs(self, x: str, y: str) -> list[tuple[dict[str, Any], float, float]]:
        return [(r, r[x], r[y]) for r in self.evals if x in r and y in r]


def load_runs(sweep_dir: Path) -> list[RunData]:
    runs = []
    for d in sorted((sweep_dir / RUNS_DIR).glob("*")):
        records = read_metrics(d)
        if not (d / "config.json").is_file() or not records:
            continue
        runs.append(
            RunData(
                d.name,
                d,
                json.loads((d / "config.json").read_text()),
                [r for r in records if any(k.startswith("eval/") for k in r)],
                [r for r in records if "loss" in r],
                (d / "summary.json").is_file(),
                [r for r in records if "kl_control/beta" in r],
            )
        )
    if not runs:
        raise ValueError(f"{sweep_dir}: no runs with metrics under {RUNS_DIR}/ (run gpo sweep)")
    return sorted(runs, key=lambda r: (*r.key, r.name))  # legends in beta order, not name order


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


def _final(r: RunData) -> dict[str, Any]:
    last = r.evals[-1] if r.evals else {}
    keys = ["win_rate", "win_rate_se", "kl", "kl_se", "mu_sq_loss", "loss"]
    keys += ["rewards/accuracies", "rewards/margins"]
    out = {k: last[f"eval/{k}"] for k in keys if f"eval/{k}" in last}
    out["step"] = last.get("step")
    return out


def run_rows(runs: list[RunData]) -> list[dict[str, Any]]:
    """Per-run numbers: final eval metrics, 90th-percentile win rate, median KL."""
    rows = []
    for r in runs:
        wins, kls = r.series("eval/win_rate"), r.series("eval/kl")
        kl_pairs = [(m, k) for _, m, k in r.pairs("eval/mu_sq_loss", "eval/kl")]
        rows.append(
            {
                "name": r.name,
                "loss": r.key[0],
                "beta": r.key[1],
                "seed": r.config.get("seed"),
                "learning_rate": r.config.get("learning_rate"),
                "kl_target": r.config.get("kl_target"),
                "finished": r.finished,
                "evals": len(r.evals),
                "final": _final(r),
                "peak_win_rate_p90": float(np.percentile(wins, 90)) if wins else None,
                "median_kl": statistics.median(kls) if kls else None,
                "spearman_kl_mu_sq": _spearman([m for m, _ in kl_pairs], [k for _, k in kl_pairs]),
            }
        )
    return rows


def spearman_per_beta(runs: list[RunData]) -> dict[str, Any]:
    """Spearman correlation of KL and mu-weighted squared loss over all checkpoints of a beta;
    with two or more seeds, also per seed (``by_seed``), to tell a trend from one seed's luck."""
    by_beta: dict[float, list[tuple[float, float]]] = defaultdict(list)
    by_seed: dict[float, dict[str, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in runs:
        pts = [(m, k) for _, m, k in r.pairs("eval/mu_sq_loss", "eval/kl")]
        by_beta[r.key[1]] += pts
        by_seed[r.key[1]][str(r.config.get("seed"))] += pts
    out: dict[str, Any] = {}
    for b, pts in sorted(by_beta.items()):
        out[f"{b:g}"] = {
            "beta": b,
            "checkpoints": len(pts),
            "spearman": _spearman([m for m, _ in pts], [k for _, k in pts]),
        }
        if len(by_seed[b]) > 1:
            out[f"{b:g}"]["by_seed"] = {
                seed: _spearman([m for m, _ in p], [k for _, k in p])
                for seed, p in sorted(by_seed[b].items())
            }
    return out


#: Judges that are pure computation on the texts, safe to build from a run folder's config.
_LOCAL_JUDGES = ("gold", "vader")


def runs_judge(runs: list[RunData]) -> str:
    """The side-by-side judge when ``--judge`` is not given: the runs' own judge only if it is
    ``gold`` or ``vader`` (pure computation). A run folder may come from anyone, and its
    config.json could name an http judge that sends the API key to any URL, or a local model to
    load: those are never built from a run folder; the report asks for ``--judge`` instead."""
    spec = str(runs[0].config.get("judge", "gold"))
    name, _ = parse_judge_spec(spec)
    if name in _LOCAL_JUDGES:
        return spec
    return _UNTRUSTED + spec


#: Marks a judge spec read from a run folder: refused by :func:`side_by_side` if it is needed.
_UNTRUSTED = "untrusted:"


def _judge_for_report(spec: str) -> Any:
    if spec.startswith(_UNTRUSTED):
        raise ValueError(
            f"the runs were judged by {redact_urls(spec.removeprefix(_UNTRUSTED))!r}; gpo report "
            "does not build that judge from a run folder's config.json (it could send your API "
            "key anywhere): pass --judge SPEC on the command line"
        )
    return resolve_judge(spec)


def _matrix(
    judge: Any, chosen: dict[str, list[dict[str, Any]]], losses: list[str]
) -> tuple[list[list[float]], list[list[float]]]:
    n = len(losses)
    rate = [[0.5] * n for _ in range(n)]
    se = [[0.0] * n for _ in range(n)]
    for i, a in enumerate(losses):
        for j, b in enumerate(losses):
            if i == j:
                continue
            sa, sb = chosen[a], chosen[b]
            prompts = [s["prompt"] for s in sa]
            if prompts != [s["prompt"] for s in sb]:
                raise ValueError(f"side by side: {a} and {b} were sampled on different prompts")
            mine, theirs = [s["policy"] for s in sa], [s["policy"] for s in sb]
            rate[i][j], se[i][j] = win_rate(judge, prompts, mine, theirs)
    return rate, se


def side_by_side(runs: list[RunData], beta: float, judge_spec: str) -> dict[str, Any] | None:
    """Judge the final samples of each loss's run at ``beta`` against each other's: the first
    seed's runs in ``win_rate``; with repeated seeds, every seed that ran all those losses in
    ``by_seed`` (one seed's matrix is not evidence of "alike")."""
    by_seed: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    for r in runs:
        samples = final_samples(r.dir)
        chosen = by_seed[str(r.config.get("seed"))]
        if r.key[1] == beta and samples and r.key[0] not in chosen:
            chosen[r.key[0]] = samples
    losses = list(next((c for c in by_seed.values() if c), {}))
    if len(losses) < 2:
        return None
    judge = _judge_for_report(judge_spec)
    # The first seed is complete by construction: its matrix is judged once, here.
    complete = {s: c for s, c in by_seed.items() if set(c) == set(losses)}
    matrices = {s: _matrix(judge, c, losses) for s, c in complete.items()}
    rate, se = next(iter(matrices.values()))
    spec = redact_urls(judge_spec)
    out = {"beta": beta, "judge": spec, "losses": losses, "win_rate": rate, "se": se}
    if len(matrices) > 1:
        out["by_seed"] = {s: m[0] for s, m in matrices.items()}
    return out


def default_beta(rows: list[dict[str, Any]]) -> float | None:
    """The beta with the best mean final win rate over losses (cf. the paper's choice of 0.1)."""
    agg: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        if finite(r["final"].get("win_rate")):
            agg[r["beta"]].append(r["final"]["win_rate"])
    return max(agg, key=lambda b: float(np.mean(agg[b]))) if agg else None
