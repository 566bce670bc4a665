"""`gpo report SWEEP_DIR`: the GPO paper's LM figures, a summary.json and a Markdown table.

Reads every ``runs/*/metrics.jsonl`` of a sweep (see gpo/sweep.py); runs are grouped by
(loss, beta), other grid keys (seeds, learning rates) pooled. Writes into ``SWEEP_DIR/report``
(or ``--out``):

- ``fig5_kl_vs_mu_sq.png``: KL vs mu-weighted squared loss over training, one panel per loss, one
  curve per beta (log-log; paper Fig. 5); ``fig10_kl_vs_mu_sq_pooled.png``: all checkpoints,
  coloured by loss (Fig. 10).
- ``fig6_win_rate_vs_kl.png``: win rate against the opponent vs KL at every checkpoint, a panel
  per loss coloured by beta (Fig. 6); ``fig9_win_rate_vs_kl_by_beta.png``: a panel per beta
  coloured by loss (Fig. 9).
- ``fig7_peak_win_rate_median_kl.png``: 90th-percentile win rate over checkpoints and median KL
  vs beta, per loss (Fig. 7).
- ``fig11_final_win_rate_vs_beta.png``: the final win rate vs beta per loss (Fig. 11).
- ``fig12_side_by_side.png``: final policies of different losses at one beta judged against each
  other on the same prompts, from their saved samples (Fig. 12).
- ``spearman_vs_beta.png``: Spearman correlation of KL and the mu-weighted squared loss over
  checkpoints, per beta (the paper: higher at larger beta).
- ``curves.png``: train loss, eval loss, eval preference accuracy and eval reward margin vs step
  per run (UPO paper Fig. 1).
- KL-targeted runs (``kl_target`` set; docs/kl-control.md): ``kl_control_trajectories.png``
  (beta and the measured KL vs step), ``kl_control_tracking.png`` (final KL vs target), and
  ``kl_control_win_rate_at_equal_kl.png`` (their win rate against the fixed-beta runs of the
  same sweep, or of ``--frontier`` sweeps, at the same KL); tables in ``summary.json`` under
  ``kl_control`` and in ``report.md``.
- Runs on the sentiment task (``data: sentiment``; :mod:`gpo.experiments.report.sentiment`):
  ``sentiment_reward_vs_kl.png`` (mean VADER reward on held-out prompts vs KL, each loss's
  frontier: the DPO paper's Fig. 2 left), ``sentiment_reward_vs_kl_by_loss.png`` and
  ``sentiment_hacking_vs_kl.png`` (length, distinct-2, exclamation marks vs KL); numbers and
  samples at low, middle and high KL under ``sentiment`` in ``summary.json`` and ``report.md``.
- Runs on the built-in gold task with per-eval samples (:mod:`gpo.experiments.report.gold_hacking`):
  ``gold_hacking_vs_kl.png`` (win rate, topic words per completion, distinct-2 vs KL), the
  numbers per checkpoint and samples at the highest KL under ``gold_hacking``.
- Sweeps with online and offline runs (:mod:`gpo.experiments.report.online`):
  ``online_vs_offline_win_rate_vs_kl.png`` and online minus offline at matched KL
  (interpolated, never extrapolated) with the held-out accuracy of both, under ``online``.
- ``summary.json`` (the resolved sweep config, per-run numbers, correlations, the side-by-side
  matrix; with repeated seeds, ``seeds``: per (loss, beta) each seed's value, the mean and the
  spread, :mod:`gpo.experiments.report.seeds`; ``strength``: the final KL per beta, the beta
  that reaches given KLs and the GPO strength translation checked against it,
  :mod:`gpo.experiments.report.strength`) and ``report.md``.

KL estimates are Monte Carlo and can be <= 0 near pi_ref; log-scale plots leave those points out,
and ``report.md`` and ``summary.json`` (``omitted_points``) say how many per figure, why, and which
curves lost every point. The side-by-side's automatic beta comes with how sure it is
(``side_by_side_beta_choice``: betas within one SE of the best are a tie).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpo.experiments.report.caveats import (
    beta_choice,
    choice_note,
    omitted_markdown,
    omitted_points,
)
from gpo.experiments.report.collect import (
    default_beta,
    load_runs,
    run_rows,
    runs_judge,
    side_by_side,
    spearman_per_beta,
)
from gpo.experiments.report.figures import draw_figures
from gpo.experiments.report.gold_hacking import (
    draw_gold_hacking,
    gold_hacking_markdown,
    gold_hacking_section,
)
from gpo.experiments.report.kl_targets import kl_control_section
from gpo.experiments.report.kl_targets_figures import draw_kl_figures
from gpo.experiments.report.markdown import kl_markdown, markdown
from gpo.experiments.report.online import draw_online_figure, online_markdown, online_section
from gpo.experiments.report.seeds import seeds_markdown, seeds_section
from gpo.experiments.report.sentiment import sentiment_markdown, sentiment_section
from gpo.experiments.report.sentiment_figures import draw_sentiment_figures
from gpo.experiments.report.strength import strength_markdown, strength_section
from gpo.io import pyplot, redact_urls, write_json


def report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    beta: float | None = None,
    judge: str | None = None,
    frontier: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Write the figures, summary.json and report.md (see the module docstring); the summary.
    ``frontier``: other sweep folders whose fixed-beta runs join this one's for the
    win-rate-at-equal-KL comparison of KL-targeted runs."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir)
    frontier_runs = [r for d in frontier for r in load_runs(Path(d))]
    out_dir = Path(out) if out is not None else sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = run_rows(runs)
    per_beta = spearman_per_beta(runs)
    betas = sorted({r.key[1] for r in runs})
    sbs_beta = beta if beta is not None else default_beta(rows)
    if sbs_beta is not None and sbs_beta not in betas:
        raise ValueError(f"--beta {sbs_beta:g} is not in the sweep (betas: {betas})")
    judge_spec = judge or runs_judge(runs)
    sbs = side_by_side(runs, sbs_beta, judge_spec) if sbs_beta is not None else None
    choice = beta_choice(rows, sbs_beta, beta is not None) if sbs_beta is not None else None
    if sbs is not None and choice is not None:
        sbs["choice_note"] = choice_note(choice, lambda x: f"{x:.3g}")
    omitted = omitted_points(runs)
    written = draw_figures(runs, rows, per_beta, sbs, out_dir)
    steered = kl_control_section(runs, frontier_runs)
    written += draw_kl_figures(pyplot(), runs, frontier_runs, steered.get("tracking", []), out_dir)
    tasks, task_figures, task_text = _task_sections(runs, out_dir)
    written += task_figures
    if not any(r.series("eval/win_rate") for r in runs):
        print(
            "report: no run evaluated a win rate (judge_prompts 0), so the win-rate figures "
            "(Figs. 6, 9, 11, 12 and Fig. 7's win-rate panel) are left out"
        )

    sweep_json = sweep_dir / "sweep.json"
    nonpositive = sum(1 for r in runs for k in r.series("eval/kl") if k <= 0)
    summary = {
        "sweep": json.loads(sweep_json.read_text()) if sweep_json.is_file() else None,
        "report": {
            "sweep_dir": str(sweep_dir),
            "side_by_side_beta": sbs_beta,
            "judge": redact_urls(judge_spec),
            "nonpositive_kl_checkpoints": nonpositive,
            "side_by_side_beta_choice": choice,
        },
        "omitted_points": omitted,
        "runs": rows,
        "spearman_per_beta": per_beta,
        "side_by_side": sbs,
        "figures": [p.name for p in written],
    }
    seeds = seeds_section(rows)
    if seeds:
        summary["seeds"] = seeds
    strength = strength_section(rows)
    if strength:
        summary["strength"] = strength
    summary.update(tasks)
    if steered:
        summary["kl_control"] = steered
        summary["report"]["frontier"] = [str(d) for d in frontier]
    write_json(out_dir / "summary.json", summary)
    text = (
        markdown(rows, per_beta, sbs, written)
        + omitted_markdown(omitted)
        + seeds_markdown(seeds)
        + strength_markdown(strength)
        + kl_markdown(steered)
        + task_text
    )
    (out_dir / "report.md").write_text(text)
    print(text)
    print(f"report: wrote {len(written)} figures, summary.json and report.md to {out_dir}/")
    return summary


def _task_sections(runs: list[Any], out_dir: Path) -> tuple[dict[str, Any], list[Path], str]:
    """What a built-in task and online runs add: summary sections, figures and report.md text
    (sentiment: reward vs KL; gold: the reward-hacking watch; online against offline)."""
    plt = pyplot()
    sentiment, hacking = sentiment_section(runs), gold_hacking_section(runs)
    online = online_section(runs)
    figures = draw_sentiment_figures(plt, sentiment, out_dir)
    figures += draw_gold_hacking(plt, hacking, out_dir)
    figures += draw_online_figure(plt, online, out_dir)
    named = (("sentiment", sentiment), ("gold_hacking", hacking), ("online", online))
    text = sentiment_markdown(sentiment) + gold_hacking_markdown(hacking) + online_markdown(online)
    return {k: v for k, v in named if v}, figures, text
