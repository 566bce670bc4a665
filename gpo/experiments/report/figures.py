"""The report's figures (GPO paper Figs. 5-7, 9-12; UPO Fig. 1), one function per figure."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpo.experiments.report.collect import RunData, finite
from gpo.io import pyplot

KL_LABEL = "KL(pi_theta || pi_sft)  (nats, on-policy MC)"
MU_LABEL = "mu-weighted squared loss E_mu[rho^2]/2  (nats^2, held-out pairs)"


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


def _readable_log_ticks(ax: Any) -> None:
    """Plain numbers on log axes; within two decades also 2x and 5x ticks, labelled. (The
    default labels every minor tick of a short log axis in scientific notation, overlapping.)"""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale != "log":
            continue
        lo, hi = axis.get_view_interval()
        axis.set_major_formatter(plain)
        if 0 < lo < hi and math.log10(hi / lo) < 2:
            axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            axis.set_minor_formatter(plain)
        else:
            axis.set_minor_formatter(NullFormatter())


def _save(plt: Any, fig: Any, path: Path) -> Path:
    for ax in fig.axes:
        _readable_log_ticks(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


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
    written.append(_save(plt, fig, out / "fig5_kl_vs_mu_sq.png"))

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
    written.append(_save(plt, fig, out / "fig10_kl_vs_mu_sq_pooled.png"))


@dataclass
class WinKLFigure:
    """Win rate vs KL at every checkpoint: one panel per value of ``panel_of(run)``, one colour
    per value of ``series_of(run)`` (Fig. 6: panels are losses; Fig. 9: panels are betas)."""

    file: str
    panels: list[Any]
    panel_of: Callable[[RunData], Any]
    series: list[Any]
    series_of: Callable[[RunData], Any]
    label: Callable[[RunData], str]
    title: Callable[[Any], str]


def _win_kl_figure(plt: Any, runs: list[RunData], spec: WinKLFigure, out: Path) -> Path:
    colors = dict(zip(spec.series, _colors(plt, len(spec.series)), strict=True))
    fig, axes = _panels(plt, len(spec.panels))
    for ax, panel in zip(axes, spec.panels, strict=True):
        for r in runs:
            if spec.panel_of(r) != panel:
                continue
            pts = [(rec, k, w) for rec, k, w in r.pairs("eval/kl", "eval/win_rate") if k > 0]
            if not pts:
                continue
            ax.errorbar(
                [k for _, k, _ in pts],
                [w for _, _, w in pts],
                xerr=[_nz(rec.get("eval/kl_se")) for rec, _, _ in pts],
                yerr=[_nz(rec.get("eval/win_rate_se")) for rec, _, _ in pts],
                fmt="o",
                ms=3,
                lw=0.6,
                color=colors[spec.series_of(r)],
                label=spec.label(r),
            )
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.set(
            xscale="log",
            xlabel=KL_LABEL,
            ylabel="win rate vs opponent (fraction)",
            title=spec.title(panel),
        )
        ax.xaxis.label.set_size(7)
        _dedupe_legend(ax)
    return _save(plt, fig, out / spec.file)


def _nz(x: Any) -> float:
    return float(x) if finite(x) else 0.0


def _dedupe_legend(ax: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    if seen:
        ax.legend(seen.values(), seen.keys(), fontsize=6)


def _by_beta_figures(
    plt: Any,
    rows: list[dict[str, Any]],
    losses: list[str],
    out: Path,
    written: list[Path],
    wins: bool,
) -> None:
    """Fig. 7 (peak win rate and median KL vs beta; the KL panel alone without win rates) and,
    with win rates, Fig. 11 (final win rate vs beta)."""
    colors = dict(zip(losses, _colors(plt, len(losses)), strict=True))

    def per_loss(loss: str, value: Callable) -> tuple[list[float], list[float]]:
        agg: dict[float, list[float]] = defaultdict(list)
        for row in rows:
            v = value(row)
            if row["loss"] == loss and finite(v):
                agg[row["beta"]].append(v)
        betas = sorted(agg)
        return betas, [float(np.mean(agg[b])) for b in betas]

    fig, axes = plt.subplots(1, 2 if wins else 1, figsize=(10 if wins else 5, 4), squeeze=False)
    a, b = (axes[0, 0], axes[0, 1]) if wins else (None, axes[0, 0])
    for loss in losses:
        b.plot(*per_loss(loss, lambda r: r["median_kl"]), "o-", color=colors[loss], label=loss)
        if a is not None:
            peak = per_loss(loss, lambda r: r["peak_win_rate_p90"])
            a.plot(*peak, "o-", color=colors[loss], label=loss)
    if a is not None:
        a.set(
            xscale="log",
            xlabel="beta (log scale)",
            ylabel="90th-percentile win rate over checkpoints",
            title="peak win rate vs beta",
        )
        a.legend(fontsize=7)
    b.set_yscale("symlog", linthresh=0.1)  # a Monte Carlo KL can be <= 0 near pi_sft
    b.set(
        xscale="log",
        xlabel="beta (log scale)",
        ylabel="median KL over checkpoints (nats)",
        title="median KL vs beta",
    )
    b.legend(fontsize=7)
    written.append(_save(plt, fig, out / "fig7_peak_win_rate_median_kl.png"))
    if not wins:
        return

    # Each run a faint point with its SE; the line joins the means over runs (seeds) per beta.
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for loss in losses:
        pts = sorted(
            (r["beta"], r["final"]["win_rate"], _nz(r["final"].get("win_rate_se")))
            for r in rows
            if r["loss"] == loss and "win_rate" in r["final"]
        )
        if not pts:
            continue
        ax.errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            yerr=[p[2] for p in pts],
            fmt="o",
            ms=3,
            capsize=2,
            alpha=0.35,
            color=colors[loss],
        )
        ax.plot(*per_loss(loss, lambda r: r["final"].get("win_rate")), "o-", ms=5,
                color=colors[loss], label=loss)  # fmt: skip
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set(
        xscale="log",
        xlabel="beta (log scale)",
        ylabel="final win rate vs opponent (fraction)",
        title="final policy vs opponent (dots: runs +- SE; line: mean)",
    )
    ax.legend(fontsize=7)
    written.append(_save(plt, fig, out / "fig11_final_win_rate_vs_beta.png"))


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
    written.append(_save(plt, fig, out / "fig12_side_by_side.png"))


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
    if pooled or any(r["spearman_kl_mu_sq"] is not None for r in rows):  # < 3 checkpoints: none
        ax.legend(fontsize=7)
    written.append(_save(plt, fig, out / "spearman_vs_beta.png"))


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
    written.append(_save(plt, fig, out / "curves.png"))


def draw_figures(
    runs: list[RunData],
    rows: list[dict[str, Any]],
    per_beta: dict[str, Any],
    sbs: dict[str, Any] | None,
    out: Path,
) -> list[Path]:
    """Every figure of the report into ``out``; the paths written."""
    plt = pyplot()
    losses = list(dict.fromkeys(r.key[0] for r in runs))
    betas = sorted({r.key[1] for r in runs})
    written: list[Path] = []
    _kl_mu_figures(plt, runs, losses, betas, out, written)
    wins = any(r.series("eval/win_rate") for r in runs)
    if wins:
        by_loss = WinKLFigure(
            "fig6_win_rate_vs_kl.png",
            losses,
            lambda r: r.key[0],
            betas,
            lambda r: r.key[1],
            lambda r: f"beta={r.key[1]:g}",
            lambda p: p,
        )
        by_beta = WinKLFigure(
            "fig9_win_rate_vs_kl_by_beta.png",
            betas,
            lambda r: r.key[1],
            losses,
            lambda r: r.key[0],
            lambda r: r.key[0],
            lambda p: f"beta={p:g}",
        )
        written += [_win_kl_figure(plt, runs, spec, out) for spec in (by_loss, by_beta)]
    _by_beta_figures(plt, rows, losses, out, written, wins)
    if sbs:
        _side_by_side_figure(plt, sbs, out, written)
    _spearman_figure(plt, rows, per_beta, losses, out, written)
    _curves_figure(plt, runs, out, written)
    return written
