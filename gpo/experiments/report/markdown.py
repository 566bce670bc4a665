"""The report's Markdown tables (``report.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpo.experiments.report.collect import finite


def _f(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if finite(x) else "-"


def markdown(
    rows: list[dict[str, Any]],
    per_beta: dict[str, Any],
    sbs: dict[str, Any] | None,
    figures: list[Path],
) -> str:
    lines = [
        "| loss | beta | final win rate (+- SE) | p90 win rate | median KL | final KL (+- SE) "
        "| final mu-sq loss | eval loss | eval acc. | eval margin | Spearman(KL, mu-sq) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["loss"], r["beta"], r["name"])):
        f = r["final"]
        lines.append(
            f"| {r['loss']} | {r['beta']:g} "
            f"| {_f(f.get('win_rate'))} +- {_f(f.get('win_rate_se'), 2)} "
            f"| {_f(r['peak_win_rate_p90'])} | {_f(r['median_kl'])} "
            f"| {_f(f.get('kl'))} +- {_f(f.get('kl_se'), 2)} | {_f(f.get('mu_sq_loss'))} "
            f"| {_f(f.get('loss'))} | {_f(f.get('rewards/accuracies'))} "
            f"| {_f(f.get('rewards/margins'))} | {_f(r['spearman_kl_mu_sq'], 2)} |"
        )
    lines += ["", "| beta | checkpoints | Spearman(KL, mu-sq), all losses |", "|---|---|---|"]
    lines += [f"| {k} | {v['checkpoints']} | {_f(v['spearman'], 2)} |" for k, v in per_beta.items()]
    if sbs:
        losses = sbs["losses"]
        lines += ["", f"Side by side at beta = {sbs['beta']:g} (row's win rate vs column):", ""]
        lines += ["| | " + " | ".join(losses) + " |", "|---" * (len(losses) + 1) + "|"]
        for name, row in zip(losses, sbs["win_rate"], strict=True):
            lines.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in row) + " |")
    lines += ["", "Figures: " + ", ".join(p.name for p in figures)]
    return "\n".join(lines) + "\n"
