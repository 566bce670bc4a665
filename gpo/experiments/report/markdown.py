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
    lines += [
        "",
        "| beta | checkpoints | Spearman(KL, mu-sq), all losses | per seed |",
        "|---|---|---|---|",
    ]
    for k, v in per_beta.items():
        seeds = " / ".join(f"{_f(x, 2)} (seed {s})" for s, x in v.get("by_seed", {}).items())
        lines.append(f"| {k} | {v['checkpoints']} | {_f(v['spearman'], 2)} | {seeds or '-'} |")
    if sbs:
        losses = sbs["losses"]
        if sbs.get("choice_note"):  # how sure the choice of beta is
            lines += ["", sbs["choice_note"]]
        lines += ["", f"Side by side at beta = {sbs['beta']:g} (row's win rate vs column):", ""]
        lines += ["| | " + " | ".join(losses) + " |", "|---" * (len(losses) + 1) + "|"]
        for name, row in zip(losses, sbs["win_rate"], strict=True):
            lines.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in row) + " |")
        for seed, m in sbs.get("by_seed", {}).items():
            off = [x for i, row in enumerate(m) for j, x in enumerate(row) if i != j]
            lines.append(f"\nSeed {seed}: pairwise win rates within {min(off):.2f}-{max(off):.2f}")
    lines += ["", "Figures: " + ", ".join(p.name for p in figures)]
    return "\n".join(lines) + "\n"


def kl_markdown(section: dict[str, Any]) -> str:
    """The KL-targeted training tables (empty without controlled runs)."""
    if not section:
        return ""
    rows, tol = section["tracking"], section["tolerance"]
    lines = [
        "",
        f"## KL-targeted runs: {section['within']} of {len(rows)} end within +-{tol:.0%} of "
        f"their target, {section['diverged']} diverged",
        "",
        "| loss | seed | KL target | final KL (+- SE) | rel. error | within | final beta "
        "| final LR scale | win rate (+- SE) | fixed-beta win rate at that KL (+- SE) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    equal = {r["name"]: r for r in section["equal_kl"]}
    for r in sorted(rows, key=lambda r: (r["loss"], r["kl_target"], str(r["seed"]))):
        e = equal[r["name"]]
        lines.append(
            f"| {r['loss']} | {r['seed']} | {r['kl_target']:g} "
            f"| {_f(r['kl'])} +- {_f(r['kl_se'], 2)} | {_f(r['relative_error'], 2)} "
            f"| {'yes' if r['within'] else 'no'} | {_f(r['final_beta'])} "
            f"| {_f(r['final_lr_scale'], 2)} | {_f(r['win_rate'])} +- {_f(r['win_rate_se'], 2)} "
            f"| {_f(e['fixed_beta_win_rate'])} +- {_f(e['fixed_beta_win_rate_se'], 2)} |"
        )
    s = section["equal_kl_summary"]
    lines += [
        "",
        f"At equal KL ({s['runs']} runs inside the fixed-beta runs' KL range): mean win-rate "
        f"difference (KL-targeted - fixed beta) {_f(s['mean_difference'], 2)}, mean SE of the "
        f"fixed-beta curve {_f(s['mean_fixed_beta_se'], 2)}.",
        "",
        "Final beta measured / predicted by `equivalent_beta` from logistic's final beta "
        "(same target and seed; geometric mean over seeds):",
        "",
        "| loss | KL target | runs | ratio |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {t['loss']} | {t['kl_target']:g} | {t['runs']} | {_f(t['ratio'], 2)} |"
        for t in section["theory"]
    ]
    return "\n".join(lines) + "\n"
