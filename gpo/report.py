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
- ``summary.json`` (the resolved sweep config, per-run numbers, correlations, the side-by-side
  matrix) and ``report.md``.

KL estimates are Monte Carlo and can be <= 0 near pi_ref; log-scale plots leave those points out
and ``summary.json`` counts them.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpo.experiments._plot import pyplot
from gpo.judges import resolve_judge
from gpo.runs import write_json
from gpo.sweep import RUNS_DIR
from gpo.tracking import read_metrics
from gpo.win_rate import final_samples

KL_LABEL = "KL(pi_theta || pi_sft)  (nats, on-policy MC)"
MU_LABEL = "mu-weighted squared loss E_mu[rho^2]/2  (nats^2, held-out pairs)"


@dataclass
class RunData:
    name: str
    dir: Path
    config: dict[str, Any]
    evals: list[dict[str, Any]]  # records with eval metrics, by step
    train: list[dict[str, Any]]  # records with the train loss
    finished: bool

    @property
    def key(self) -> tuple[str, float]:
        return self.config["loss"], float(self.config["beta"])

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
            )
        )
    if not runs:
        raise ValueError(f"{sweep_dir}: no runs with metrics under {RUNS_DIR}/ (run gpo sweep)")
    return sorted(runs, key=lambda r: (*r.key, r.name))  # legends in beta order, not name order


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


def _groups(runs: list[RunData]) -> dict[tuple[str, float], list[RunData]]:
    out: dict[tuple[str, float], list[RunData]] = defaultdict(list)
    for r in runs:
        out[r.key].append(r)
    return dict(out)


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
        mu, kl_pairs = r.pairs("eval/mu_sq_loss", "eval/kl"), None
        kl_pairs = [(m, k) for _, m, k in mu]
        rows.append(
            {
                "name": r.name,
                "loss": r.key[0],
                "beta": r.key[1],
                "seed": r.config.get("seed"),
                "learning_rate": r.config.get("learning_rate"),
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
    """Spearman correlation of KL and mu-weighted squared loss over all checkpoints of a beta."""
    by_beta: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for r in runs:
        by_beta[r.key[1]] += [(m, k) for _, m, k in r.pairs("eval/mu_sq_loss", "eval/kl")]
    return {
        f"{b:g}": {
            "beta": b,
            "checkpoints": len(pts),
            "spearman": _spearman([m for m, _ in pts], [k for _, k in pts]),
        }
        for b, pts in sorted(by_beta.items())
    }


def side_by_side(runs: list[RunData], beta: float, judge_spec: str) -> dict[str, Any] | None:
    """Judge the final samples of each loss's run at ``beta`` against each other's."""
    chosen: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        samples = final_samples(r.dir)
        if r.key[1] == beta and samples and r.key[0] not in chosen:
            chosen[r.key[0]] = samples
    losses = list(chosen)
    if len(losses) < 2:
        return None
    judge = resolve_judge(judge_spec)
    from gpo.gold import mean_and_se

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
            scores = judge(prompts, [s["policy"] for s in sa], [s["policy"] for s in sb])
            rate[i][j], se[i][j] = mean_and_se(scores)
    return {"beta": beta, "judge": judge_spec, "losses": losses, "win_rate": rate, "se": se}


# --- figures ----------------------------------------------------------------------------------


def _panels(plt: Any, n: int, size: float = 3.6) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 0.6, size * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _colors(plt: Any, n: int) -> list[Any]:
    cmap = plt.get_cmap("viridis" if n > 6 else "tab10")
    return [cmap(k / max(n - 1, 1)) if n > 6 else cmap(k) for k in range(n)]


def _save(fig: Any, path: Path, written: list[Path]) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    written.append(path)


def _kl_mu_figures(
    plt: Any,
    runs: list[RunData],
    losses: list[str],
    betas: list[float],
    out: Path,
    written: list[Path],
) -> None:
    colors = dict(zip(betas, _colors(plt, len(betas)), strict=True))
    fig, axes = _panels(plt, len(losses))
    for ax, loss in zip(axes, losses, strict=True):
        for r in runs:
            if r.key[0] != loss:
                continue
            pts = [(m, k) for _, m, k in r.pairs("eval/mu_sq_loss", "eval/kl") if m > 0 and k > 0]
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    "o-",
                    ms=3,
                    color=colors[r.key[1]],
                    label=f"beta={r.key[1]:g}",
                )
        ax.set(xscale="log", yscale="log", xlabel=MU_LABEL, ylabel=KL_LABEL, title=loss)
        ax.xaxis.label.set_size(7)
        ax.yaxis.label.set_size(7)
        ax.legend(fontsize=6)
    _save(fig, out / "fig5_kl_vs_mu_sq.png", written)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for loss, color in zip(losses, _colors(plt, len(losses)), strict=True):
        pts = [
            (m, k)
            for r in runs
            if r.key[0] == loss
            for _, m, k in r.pairs("eval/mu_sq_loss", "eval/kl")
            if m > 0 and k > 0
        ]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=10, color=color, label=loss, alpha=0.7)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel=MU_LABEL,
        ylabel=KL_LABEL,
        title="KL vs mu-weighted squared loss, all checkpoints and betas",
    )
    ax.legend(fontsize=7)
    _save(fig, out / "fig10_kl_vs_mu_sq_pooled.png", written)
    plt.close(fig)


def _win_kl_figure(
    plt: Any,
    runs: list[RunData],
    panels: list[Any],
    panel_of: Callable,
    series: list[Any],
    series_of: Callable,
    label: Callable,
    title: Callable,
    path: Path,
    written: list[Path],
) -> None:
    colors = dict(zip(series, _colors(plt, len(series)), strict=True))
    fig, axes = _panels(plt, len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        for r in runs:
            if panel_of(r) != panel:
                continue
            pts = [(rec, k, w) for rec, k, w in r.pairs("eval/kl", "eval/win_rate") if k > 0]
            if not pts:
                continue
            ax.errorbar(
                [k for _, k, _ in pts],
                [w for _, _, w in pts],
                xerr=[rec.get("eval/kl_se", 0) for rec, _, _ in pts],
                yerr=[_nz(rec.get("eval/win_rate_se")) for rec, _, _ in pts],
                fmt="o",
                ms=3,
                lw=0.6,
                color=colors[series_of(r)],
                label=label(r),
            )
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.set(
            xscale="log",
            xlabel=KL_LABEL,
            ylabel="win rate vs opponent (fraction)",
            title=title(panel),
        )
        ax.xaxis.label.set_size(7)
        _dedupe_legend(ax)
    _save(fig, path, written)
    plt.close(fig)


def _nz(x: Any) -> float:
    return float(x) if _finite(x) else 0.0


def _dedupe_legend(ax: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    if seen:
        ax.legend(seen.values(), seen.keys(), fontsize=6)


def _by_beta_figures(
    plt: Any, rows: list[dict[str, Any]], losses: list[str], out: Path, written: list[Path]
) -> None:
    colors = dict(zip(losses, _colors(plt, len(losses)), strict=True))

    def per_loss(loss: str, value: Callable) -> tuple[list[float], list[float]]:
        agg: dict[float, list[float]] = defaultdict(list)
        for row in rows:
            v = value(row)
            if row["loss"] == loss and _finite(v):
                agg[row["beta"]].append(v)
        betas = sorted(agg)
        return betas, [float(np.mean(agg[b])) for b in betas]

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for loss in losses:
        a.plot(
            *per_loss(loss, lambda r: r["peak_win_rate_p90"]), "o-", color=colors[loss], label=loss
        )
        b.plot(*per_loss(loss, lambda r: r["median_kl"]), "o-", color=colors[loss], label=loss)
    a.set(
        xscale="log",
        xlabel="beta (log scale)",
        ylabel="90th-percentile win rate over checkpoints",
        title="peak win rate vs beta",
    )
    b.set_yscale("symlog", linthresh=0.1)  # a Monte Carlo KL can be <= 0 near pi_sft
    b.set(
        xscale="log",
        xlabel="beta (log scale)",
        ylabel="median KL over checkpoints (nats)",
        title="median KL vs beta",
    )
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    _save(fig, out / "fig7_peak_win_rate_median_kl.png", written)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for loss in losses:
        pts = sorted(
            (r["beta"], r["final"]["win_rate"], _nz(r["final"].get("win_rate_se")))
            for r in rows
            if r["loss"] == loss and "win_rate" in r["final"]
        )
        if pts:
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                fmt="o-",
                ms=4,
                capsize=2,
                color=colors[loss],
                label=loss,
            )
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set(
        xscale="log",
        xlabel="beta (log scale)",
        ylabel="final win rate vs opponent (fraction, +- SE)",
        title="final policy vs opponent",
    )
    ax.legend(fontsize=7)
    _save(fig, out / "fig11_final_win_rate_vs_beta.png", written)
    plt.close(fig)


def _side_by_side_figure(plt: Any, sbs: dict[str, Any], out: Path, written: list[Path]) -> None:
    losses, rate = sbs["losses"], np.array(sbs["win_rate"])
    fig, ax = plt.subplots(figsize=(1.1 * len(losses) + 2.5, 1.0 * len(losses) + 1.8))
    im = ax.imshow(rate, vmin=0, vmax=1, cmap="RdBu")
    for i in range(len(losses)):
        for j in range(len(losses)):
            ax.text(j, i, f"{rate[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(losses)), losses, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(losses)), losses, fontsize=7)
    ax.set(
        xlabel="opponent (column)",
        ylabel="policy (row)",
        title=f"win rate of row vs column, beta={sbs['beta']:g}, judge {sbs['judge']}",
    )
    fig.colorbar(im, ax=ax, label="win rate (fraction)")
    _save(fig, out / "fig12_side_by_side.png", written)
    plt.close(fig)


def _spearman_figure(
    plt: Any,
    rows: list[dict[str, Any]],
    per_beta: dict[str, Any],
    losses: list[str],
    out: Path,
    written: list[Path],
) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for loss, color in zip(losses, _colors(plt, len(losses)), strict=True):
        pts = sorted(
            (r["beta"], r["spearman_kl_mu_sq"])
            for r in rows
            if r["loss"] == loss and r["spearman_kl_mu_sq"] is not None
        )
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", ms=3, lw=0.8, color=color, label=loss)
    pooled = [(v["beta"], v["spearman"]) for v in per_beta.values() if v["spearman"] is not None]
    if pooled:
        ax.plot(*zip(*pooled, strict=True), "k^-", lw=2, label="all losses pooled")
    ax.set(
        xscale="log",
        xlabel="beta (log scale)",
        ylim=(-1.05, 1.05),
        ylabel="Spearman correlation (KL, mu-weighted sq. loss)",
        title="correlation over checkpoints",
    )
    ax.legend(fontsize=7)
    _save(fig, out / "spearman_vs_beta.png", written)
    plt.close(fig)


def _curves_figure(plt: Any, runs: list[RunData], out: Path, written: list[Path]) -> None:
    losses = sorted({r.key[0] for r in runs})
    betas = sorted({r.key[1] for r in runs})
    colors = dict(zip(losses, _colors(plt, len(losses)), strict=True))
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [
        (axes[0, 0], None, "loss", "train loss (per batch)"),
        (axes[0, 1], "eval", "eval/loss", "eval loss (held-out pairs)"),
        (axes[1, 0], "eval", "eval/rewards/accuracies", "eval preference accuracy (fraction)"),
        (axes[1, 1], "eval", "eval/rewards/margins", "eval reward margin (beta * rho, nats)"),
    ]
    for ax, kind, key, label in panels:
        for r in runs:
            records = r.evals if kind else r.train
            pts = [(rec["step"], rec[key]) for rec in records if key in rec]
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    styles[betas.index(r.key[1]) % 4],
                    lw=1,
                    color=colors[r.key[0]],
                    label=f"{r.key[0]} beta={r.key[1]:g}",
                )
        ax.set(xlabel="optimizer step", ylabel=label)
        if key.endswith("loss"):  # losses differ by orders of magnitude across betas
            ax.set_yscale("symlog", linthresh=1e-2)
        _dedupe_legend(ax)
    _save(fig, out / "curves.png", written)
    plt.close(fig)


# --- markdown and entry point -------------------------------------------------------------------


def _f(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if _finite(x) else "-"


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


def _default_beta(rows: list[dict[str, Any]]) -> float | None:
    """The beta with the best mean final win rate over losses (cf. the paper's choice of 0.1)."""
    agg: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        if _finite(r["final"].get("win_rate")):
            agg[r["beta"]].append(r["final"]["win_rate"])
    return max(agg, key=lambda b: float(np.mean(agg[b]))) if agg else None


def report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    beta: float | None = None,
    judge: str | None = None,
) -> dict[str, Any]:
    """Write the figures, summary.json and report.md (see the module docstring); the summary."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir)
    out_dir = Path(out) if out is not None else sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = run_rows(runs)
    per_beta = spearman_per_beta(runs)
    losses = list(dict.fromkeys(r.key[0] for r in runs))
    betas = sorted({r.key[1] for r in runs})
    sbs_beta = beta if beta is not None else _default_beta(rows)
    if sbs_beta is not None and sbs_beta not in betas:
        raise ValueError(f"--beta {sbs_beta:g} is not in the sweep (betas: {betas})")
    judge_spec = judge or runs[0].config.get("judge", "gold")
    sbs = side_by_side(runs, sbs_beta, judge_spec) if sbs_beta is not None else None

    plt = pyplot()
    written: list[Path] = []
    _kl_mu_figures(plt, runs, losses, betas, out_dir, written)
    _win_kl_figure(
        plt,
        runs,
        losses,
        lambda r: r.key[0],
        betas,
        lambda r: r.key[1],
        lambda r: f"beta={r.key[1]:g}",
        lambda p: p,
        out_dir / "fig6_win_rate_vs_kl.png",
        written,
    )
    _win_kl_figure(
        plt,
        runs,
        betas,
        lambda r: r.key[1],
        losses,
        lambda r: r.key[0],
        lambda r: r.key[0],
        lambda p: f"beta={p:g}",
        out_dir / "fig9_win_rate_vs_kl_by_beta.png",
        written,
    )
    _by_beta_figures(plt, rows, losses, out_dir, written)
    if sbs:
        _side_by_side_figure(plt, sbs, out_dir, written)
    _spearman_figure(plt, rows, per_beta, losses, out_dir, written)
    _curves_figure(plt, runs, out_dir, written)

    sweep_json = sweep_dir / "sweep.json"
    nonpositive = sum(1 for r in runs for k in r.series("eval/kl") if k <= 0)
    summary = {
        "sweep": json.loads(sweep_json.read_text()) if sweep_json.is_file() else None,
        "report": {
            "sweep_dir": str(sweep_dir),
            "side_by_side_beta": sbs_beta,
            "judge": judge_spec,
            "nonpositive_kl_checkpoints": nonpositive,
        },
        "runs": rows,
        "spearman_per_beta": per_beta,
        "side_by_side": sbs,
        "figures": [p.name for p in written],
    }
    write_json(out_dir / "summary.json", summary)
    (out_dir / "report.md").write_text(markdown(rows, per_beta, sbs, written))
    print(markdown(rows, per_beta, sbs, written))
    print(f"report: wrote {len(written)} figures, summary.json and report.md to {out_dir}/")
    return summary
