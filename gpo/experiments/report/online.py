"""Online against offline in `gpo report` (issue 31; Tang et al. 2024, arXiv 2405.08448, Fig. 1):
the win rate against KL of both on one figure, online minus offline at matched KL, and the
held-out preference accuracy of both (Tang et al.: offline classifies better, generates worse).

Only for sweeps with both kinds of run (``online`` true and false in their configs); IPO-MD runs
(``online_mixture`` > 0) are a third kind, compared with the offline runs like the online ones.
Matched KL: for each online run's last checkpoint, the offline win rate at its KL is
interpolated linearly between the two offline runs of the same loss (any beta and seed: their
last checkpoints, sorted by KL) whose KLs bracket it; an online KL outside the offline runs'
range gets no number (never extrapolated). The difference's SE combines the online SE with the
two offline SEs weighted as in the interpolation, taken as independent (they are different
runs, judged on the same held-out prompts, so this SE is a rough one). Per (kind, loss, beta)
the seeds' differences are averaged, with their spread. Each run's peak checkpoint (the highest
win rate) says whether more KL stopped buying win rate before the run ended.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

from gpo.experiments.report.collect import OFFLINE, RunData, finite, run_kind
from gpo.experiments.report.figures import _colors, _save

ACCURACY = "eval/rewards/accuracies"


def _checkpoints(run: RunData) -> list[dict[str, Any]]:
    return [
        {"step": rec["step"], "kl": rec["eval/kl"], "win_rate": rec["eval/win_rate"],
         "win_rate_se": rec.get("eval/win_rate_se", math.nan),
         "accuracy": rec.get(ACCURACY, math.nan)}
        for rec in run.evals
        if finite(rec.get("eval/kl")) and finite(rec.get("eval/win_rate"))
    ]  # fmt: skip


def _final(run: RunData) -> dict[str, Any] | None:
    """The run's last checkpoint with a KL and a win rate, and its peak one."""
    points = _checkpoints(run)
    if not points:
        return None
    peak = max(points, key=lambda p: p["win_rate"])
    return {
        "run": run.name,
        "loss": str(run.config["loss"]),
        "beta": float(run.config["beta"]),
        "seed": run.config.get("seed"),
        "kind": run_kind(run.config),
        "online": run_kind(run.config) != OFFLINE,
        "finished": run.finished,  # an unfinished run's last checkpoint is not its end
        **points[-1],
        "peak": {k: peak[k] for k in ("step", "kl", "win_rate")},
        "curve": [[p["kl"], p["win_rate"]] for p in points],
    }


def matched(online: dict[str, Any], offline: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Online minus the offline win rate interpolated at the online KL (None outside the
    offline KL range); ``offline``: last checkpoints of the same loss."""
    pts = sorted(offline, key=lambda p: p["kl"])
    kl = online["kl"]
    for lo, hi in pairwise(pts):
        if lo["kl"] <= kl <= hi["kl"]:
            w = 0.0 if hi["kl"] == lo["kl"] else (kl - lo["kl"]) / (hi["kl"] - lo["kl"])
            rate = (1 - w) * lo["win_rate"] + w * hi["win_rate"]
            se_off = math.hypot((1 - w) * lo["win_rate_se"], w * hi["win_rate_se"])
            return {
                "offline_win_rate": rate,
                "difference": online["win_rate"] - rate,
                "difference_se": math.hypot(online["win_rate_se"], se_off),
                "between": [lo["run"], hi["run"]],
            }
    return None


def _groups(finals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (kind, loss, beta): the seeds' mean and spread of the final KL, win rate, accuracy
    and (online kinds) the matched difference over the seeds that have one."""
    by: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for f in finals:
        by[f["kind"], f["loss"], f["beta"]].append(f)
    out = []
    for (k, loss, beta), group in sorted(by.items()):
        entry: dict[str, Any] = {"kind": k, "loss": loss, "beta": beta,
                                 "seeds": [f["seed"] for f in group]}  # fmt: skip
        diffs = [f["matched"]["difference"] for f in group if f.get("matched")]
        for name, values in (
            ("kl", [f["kl"] for f in group]),
            ("win_rate", [f["win_rate"] for f in group]),
            ("accuracy", [f["accuracy"] for f in group if finite(f["accuracy"])]),
            ("difference", diffs),
        ):
            if values:
                spread = max(values) - min(values) if len(values) > 1 else math.nan  # one seed
                entry[name] = {"mean": statistics.fmean(values), "spread": spread, "n": len(values)}
        out.append(entry)
    return out


def online_section(runs: list[RunData]) -> dict[str, Any]:
    """The numbers behind the figure ({} unless the sweep has online and offline runs)."""
    finals = [f for f in map(_final, runs) if f is not None]
    if not {True, False} <= {f["online"] for f in finals}:
        return {}
    for f in finals:
        if f["online"]:
            same = [g for g in finals if not g["online"] and g["loss"] == f["loss"]]
            f["matched"] = matched(f, same)
    return {"finals": finals, "groups": _groups(finals)}


def draw_online_figure(plt: Any, section: dict[str, Any], out: Path) -> list[Path]:
    """Win rate (+- SE) against KL, a panel per loss: each kind's last checkpoints as points
    with error bars, every run's checkpoints as a faint line."""
    if not section:
        return []
    finals = section["finals"]
    losses = list(dict.fromkeys(f["loss"] for f in finals))
    kinds = sorted({f["kind"] for f in finals}, key=lambda k: (k != OFFLINE, k))
    colors = dict(zip(kinds, _colors(plt, len(kinds)), strict=True))
    fig, axes = plt.subplots(1, len(losses), figsize=(5.5 * len(losses), 4.2), squeeze=False)
    for ax, loss in zip(axes[0], losses, strict=True):
        for k in kinds:
            pts = sorted((f for f in finals if f["loss"] == loss and f["kind"] == k),
                         key=lambda f: f["kl"])  # fmt: skip
            for f in pts:
                xs, ys = zip(*f["curve"], strict=True)
                ax.plot(xs, ys, ".-", color=colors[k], alpha=0.3, lw=1, ms=3)
            if pts:
                ax.errorbar([f["kl"] for f in pts], [f["win_rate"] for f in pts],
                            yerr=[f["win_rate_se"] for f in pts], fmt="o", color=colors[k],
                            label=f"{k} (last checkpoint)", capsize=2)  # fmt: skip
        ax.set(title=loss, xlabel="KL(pi_theta || pi_ref) (nats)", ylabel="win rate vs pi_ref")
        ax.legend(fontsize=8)
    return [_save(plt, fig, out / "online_vs_offline_win_rate_vs_kl.png")]


def _cell(entry: dict[str, Any], name: str, signed: bool = False) -> str:
    s = entry.get(name)
    if s is None:
        return "-"
    mean = f"{s['mean']:+.3f}" if signed else f"{s['mean']:.3f}"
    if s["n"] < 2:
        return f"{mean} (n 1)"
    return f"{mean} (spread {s['spread']:.3f}, n {s['n']})"


def online_markdown(section: dict[str, Any]) -> str:
    if not section:
        return ""
    lines = ["", "## Online against offline: win rate at matched KL, held-out accuracy", ""]
    lines += ["| run | kind | step | KL | win rate (+- SE) | held-out accuracy | peak win rate "
              "(step, KL) | online - offline at this KL (+- SE) |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for f in sorted(section["finals"], key=lambda f: (f["loss"], f["online"], f["kl"])):
        m = f.get("matched")
        diff = "-" if not f["online"] else "outside the offline KL range"
        if m is not None:
            diff = f"{m['difference']:+.3f} +- {m['difference_se']:.3f}"
        p = f["peak"]
        lines.append(
            f"| {f['run']} | {f['kind']} | {f['step']}{'' if f['finished'] else ' (running)'} | "
            f"{f['kl']:.2f} | "
            f"{f['win_rate']:.3f} +- {f['win_rate_se']:.3f} | {f['accuracy']:.3f} | "
            f"{p['win_rate']:.3f} ({p['step']}, {p['kl']:.1f}) | {diff} |"
        )
    lines += ["", "Over seeds (mean, spread = max - min, n = seeds with a value):", "",
              "| kind | loss | beta | KL | win rate | held-out accuracy | online - offline |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for g in section.get("groups", []):
        lines.append(
            f"| {g['kind']} | {g['loss']} | {g['beta']:g} | {_cell(g, 'kl')} | "
            f"{_cell(g, 'win_rate')} | {_cell(g, 'accuracy')} | "
            f"{_cell(g, 'difference', signed=True)} |"
        )
    return "\n".join(lines) + "\n"
