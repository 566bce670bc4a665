"""The report's figures for KL-targeted training (:mod:`gpo.experiments.report.kl_targets`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpo.experiments.report.collect import RunData, finite
from gpo.experiments.report.figures import KL_LABEL, _colors, _dedupe_legend, _panels, _save
from gpo.experiments.report.kl_targets import TOLERANCE, controlled, fixed_points


def _trajectories(plt: Any, runs: list[RunData], out: Path) -> Path:
    """Per loss: beta (top), the KL the controller measured (middle, the target dashed) and the
    LR brake's scale (bottom) against the step, one colour per target."""
    steered = controlled(runs)
    losses = list(dict.fromkeys(r.config["loss"] for r in steered))
    targets = sorted({float(r.config["kl_target"]) for r in steered})
    colors = dict(zip(targets, _colors(plt, len(targets)), strict=True))
    fig, axes = plt.subplots(3, len(losses), figsize=(3.4 * len(losses) + 0.6, 9), squeeze=False)
    for col, loss in enumerate(losses):
        top, middle, bottom = axes[0, col], axes[1, col], axes[2, col]
        for r in (r for r in steered if r.config["loss"] == loss):
            t = float(r.config["kl_target"])
            steps = [x["step"] for x in r.control]
            top.plot(steps, [x["kl_control/beta"] for x in r.control], color=colors[t], lw=1)
            seen = [(x["step"], x["kl_control/kl"]) for x in r.control if "kl_control/kl" in x]
            middle.plot(*zip(*seen, strict=True), color=colors[t], lw=0.8, label=f"target {t:g}")
            middle.axhline(t, color=colors[t], ls="--", lw=0.8)
            scale = [x.get("kl_control/lr_scale", 1.0) for x in r.control]
            bottom.plot(steps, scale, color=colors[t], lw=1)
        top.set(title=loss, yscale="log", ylabel="beta" if col == 0 else None)
        middle.set(yscale="log", ylabel="KL measured (nats)" if col == 0 else None)
        bottom.set(xlabel="optimizer step", yscale="log", ylabel="LR scale" if col == 0 else None)
        _dedupe_legend(middle)
    return _save(plt, fig, out / "kl_control_trajectories.png")


def _tracking(plt: Any, rows: list[dict[str, Any]], out: Path) -> Path:
    """Final KL (+- SE) against the target, per run; the band is the tolerance."""
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    colors = dict(zip(losses, _colors(plt, len(losses)), strict=True))
    targets = sorted({r["kl_target"] for r in rows})
    lo, hi = targets[0] / 2, targets[-1] * 2
    ax.fill_between([lo, hi], [lo * (1 - TOLERANCE), hi * (1 - TOLERANCE)],
                    [lo * (1 + TOLERANCE), hi * (1 + TOLERANCE)], color="0.9")  # fmt: skip
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8)
    for r in rows:
        if finite(r["kl"]):
            x = r["kl_target"] * (1 + 0.04 * (losses.index(r["loss"]) - len(losses) / 2))
            ax.errorbar(x, r["kl"], yerr=r["kl_se"] or 0, fmt="o", ms=4, color=colors[r["loss"]],
                        label=r["loss"])  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="KL target (nats)", ylabel="final " + KL_LABEL)
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xticks(targets, [f"{t:g}" for t in targets])
    ax.set_title(f"final KL vs target (band: +-{TOLERANCE:.0%})", fontsize=9)
    _dedupe_legend(ax)
    return _save(plt, fig, out / "kl_control_tracking.png")


def _equal_kl(plt: Any, runs: list[RunData], frontier_runs: list[RunData], out: Path) -> Path:
    """Per loss: the fixed-beta runs' final win rate vs KL (line) and the controlled runs'."""
    points = fixed_points(runs + frontier_runs)
    steered = controlled(runs)
    losses = list(dict.fromkeys(r.config["loss"] for r in steered))
    fig, axes = _panels(plt, len(losses))
    for ax, loss in zip(axes, losses, strict=True):
        pts = sorted(points.get(loss, []))
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        color="0.4", marker=".", lw=1, label="fixed beta")  # fmt: skip
        for r in (r for r in steered if r.config["loss"] == loss):
            last = r.evals[-1] if r.evals else {}
            if finite(last.get("eval/kl")) and finite(last.get("eval/win_rate")):
                ax.errorbar(last["eval/kl"], last["eval/win_rate"],
                            xerr=last.get("eval/kl_se", 0), yerr=last.get("eval/win_rate_se", 0),
                            fmt="o", color="C3", ms=4, label="KL-targeted")  # fmt: skip
        ax.set(title=loss, xscale="log", xlabel=KL_LABEL, ylabel="final win rate")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # minor labels overlap on short axes
        _dedupe_legend(ax)
    return _save(plt, fig, out / "kl_control_win_rate_at_equal_kl.png")


def draw_kl_figures(
    plt: Any, runs: list[RunData], frontier_runs: list[RunData], rows: list[dict], out: Path
) -> list[Path]:
    """The KL-control figures into ``out`` (none without controlled runs); the paths written."""
    if not rows:
        return []
    written = [_trajectories(plt, runs, out), _tracking(plt, rows, out)]
    if any(r.series("eval/win_rate") for r in runs):
        written.append(_equal_kl(plt, runs, frontier_runs, out))
    return written
