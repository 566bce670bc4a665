"""What a reader of ``report.md`` must know to read it right: the points each log-scale figure
leaves out (a Monte Carlo KL near pi_ref can be <= 0, and log axes cannot show it), and how
sure the side-by-side's automatic choice of beta is."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from gpo.experiments.report.collect import RunData, finite

#: A log-scale figure: its file, the (x, y) metrics of its points, which must be > 0, and
#: whether it is drawn only when runs evaluated a win rate.
LOG_FIGURES: list[tuple[str, str, str, bool]] = [
    ("fig5_kl_vs_mu_sq.png", "eval/mu_sq_loss", "eval/kl", False),
    ("fig10_kl_vs_mu_sq_pooled.png", "eval/mu_sq_loss", "eval/kl", False),
    ("fig6_win_rate_vs_kl.png", "eval/kl", "eval/win_rate", True),
    ("fig9_win_rate_vs_kl_by_beta.png", "eval/kl", "eval/win_rate", True),
]
#: Which of a figure's metrics must be positive on its log axes.
_POSITIVE = {"eval/mu_sq_loss": "mu-sq loss", "eval/kl": "KL"}


def omitted_points(runs: list[RunData]) -> list[dict[str, Any]]:
    """Per log-scale figure drawn: its checkpoints, how many it leaves out and why, and the
    (loss, beta) curves left with no point at all."""
    wins = any(r.series("eval/win_rate") for r in runs)
    out = []
    for name, x, y, needs_wins in LOG_FIGURES:
        if needs_wins and not wins:
            continue
        checks = [(label, m) for m, label in _POSITIVE.items() if m in (x, y)]
        total, why = 0, defaultdict(int)
        kept: dict[tuple[str, float], int] = defaultdict(int)
        for r in runs:
            for rec, _, _ in r.pairs(x, y):
                total += 1
                bad = [label for label, m in checks if not rec[m] > 0]
                for label in bad:
                    why[f"{label} <= 0"] += 1
                kept[r.key] += not bad
        gone = sorted(key for key, n in kept.items() if n == 0)
        left_out = total - sum(kept.values())
        curves = [{"loss": k[0], "beta": k[1]} for k in gone]
        out.append(
            {"figure": name, "points": total, "left_out": left_out, "why": dict(why),
             "curves_without_points": curves}
        )  # fmt: skip
    return out


def omitted_markdown(rows: list[dict[str, Any]]) -> str:
    """The table of left-out points (empty when every figure shows all its points)."""
    if not any(r["left_out"] for r in rows):
        return ""
    lines = [
        "",
        "## Points the log-scale figures leave out",
        "",
        "A Monte Carlo KL estimate near pi_ref can be <= 0; a log axis cannot show it (nor a "
        "mu-sq loss of 0). These checkpoints are in `summary.json` and the tables above, not in "
        "the figures:",
        "",
        "| figure | checkpoints | left out | why | curves with no point left |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        why = ", ".join(f"{k}: {v}" for k, v in r["why"].items()) or "-"
        gone = ", ".join(f"{c['loss']} beta={c['beta']:g}" for c in r["curves_without_points"])
        lines.append(f"| {r['figure']} | {r['points']} | {r['left_out']} | {why} | {gone or '-'} |")
    return "\n".join(lines) + "\n"


def _mean_se(values: list[tuple[float, float]]) -> tuple[float, float]:
    """Mean of independent estimates and its SE, ``sqrt(sum se^2) / n``."""
    n = len(values)
    return sum(v for v, _ in values) / n, math.sqrt(sum(s * s for _, s in values)) / n


def beta_choice(rows: list[dict[str, Any]], chosen: float, explicit: bool) -> dict[str, Any]:
    """How the side-by-side's beta was chosen: given (``--beta``), or the best mean final win
    rate over losses, with every beta whose mean is within one SE of the difference tied."""
    agg: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        f = r["final"]
        if finite(f.get("win_rate")):
            se = f.get("win_rate_se")
            agg[r["beta"]].append((f["win_rate"], se if finite(se) else 0.0))
    means = {b: _mean_se(v) for b, v in sorted(agg.items())}
    out: dict[str, Any] = {"beta": chosen, "given": explicit, "per_beta": [
        {"beta": b, "mean_win_rate": m, "se": s} for b, (m, s) in means.items()]}  # fmt: skip
    if explicit or chosen not in means:
        return out
    best, best_se = means[chosen]
    out["tied"] = [
        b for b, (m, s) in means.items()
        if b != chosen and best - m <= math.hypot(best_se, s)
    ]  # fmt: skip
    return out


def choice_note(choice: dict[str, Any], fmt: Callable[[float], str]) -> str:
    """One sentence for report.md on how sure the beta choice is."""
    if choice["given"]:
        return f"beta = {choice['beta']:g} was chosen with --beta."
    per = {p["beta"]: p for p in choice["per_beta"]}
    best = per[choice["beta"]]
    text = (
        f"beta = {choice['beta']:g} has the best mean final win rate over losses "
        f"({fmt(best['mean_win_rate'])} +- {fmt(best['se'])})"
    )
    if not choice.get("tied"):
        return text + ", more than one SE of the difference above every other beta."
    others = "; ".join(
        f"{b:g}: {fmt(per[b]['mean_win_rate'])} +- {fmt(per[b]['se'])}" for b in choice["tied"]
    )
    return (
        f"{text}, but a tie: within one SE of the difference of it are {others}. The choice "
        "among them is noise, not evidence; pass --beta to pick one."
    )
