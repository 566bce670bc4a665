"""The sentiment task's figures (:mod:`gpo.experiments.report.sentiment`): VADER reward vs KL
with each loss's frontier (DPO Fig. 2 left), a panel per loss by beta, and the reward-hacking
numbers (length, distinct-2, exclamation marks) vs KL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpo.experiments.report.figures import _colors, _dedupe_legend, _panels, _save

KL_LABEL = "KL(pi_theta || pi_ref)  (nats, on-policy MC)"
REWARD_LABEL = "mean VADER compound r*, held-out prompts"


def _reference(ax: Any, ref: dict[str, Any] | None, key: str) -> None:
    if ref is not None:
        ax.scatter([0.0], [ref[key]], marker="*", s=120, color="black", label="pi_ref", zorder=3)


def _frontier_figure(plt: Any, section: dict[str, Any], out: Path) -> Path:
    """Every checkpoint, a colour per loss, and each loss's upper envelope (its frontier)."""
    losses = list(section["frontier"])
    colors = dict(zip(losses, _colors(plt, len(losses)), strict=True))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for loss in losses:
        pts = [(p["kl"], p["reward"]) for p in section["points"] if p["loss"] == loss]
        ax.scatter(*zip(*pts, strict=True), color=colors[loss], s=14, alpha=0.6, label=loss)
        env = section["frontier"][loss]
        ax.plot(*zip(*env, strict=True), color=colors[loss], lw=1.2, drawstyle="steps-post")
    _reference(ax, section["reference"], "reward")
    ax.set(
        xlabel=KL_LABEL,
        ylabel=REWARD_LABEL,
        title="sentiment: reward vs KL (lines: each loss's frontier)",
    )
    ax.legend(fontsize=8)
    return _save(plt, fig, out / "sentiment_reward_vs_kl.png")


def _by_loss_figure(plt: Any, section: dict[str, Any], out: Path) -> Path:
    """A panel per loss, a colour per beta: where along the frontier each beta ends."""
    losses = list(section["frontier"])
    betas = sorted({p["beta"] for p in section["points"]})
    colors = dict(zip(betas, _colors(plt, len(betas)), strict=True))
    fig, axes = _panels(plt, len(losses))
    for ax, loss in zip(axes, losses, strict=True):
        for p in (p for p in section["points"] if p["loss"] == loss):
            ax.scatter(
                p["kl"], p["reward"], color=colors[p["beta"]], s=16, label=f"beta {p['beta']:g}"
            )
        _reference(ax, section["reference"], "reward")
        ax.set(title=loss, xlabel="KL (nats)", ylabel="mean r*")
        _dedupe_legend(ax)
    return _save(plt, fig, out / "sentiment_reward_vs_kl_by_loss.png")


def _hacking_figure(plt: Any, section: dict[str, Any], out: Path) -> Path:
    """Mean words, distinct-2 and '!' per completion vs KL: a rise in r* that comes with short,
    repetitive or exclaiming completions is VADER being gamed, not better reviews."""
    losses = list(section["frontier"])
    colors = dict(zip(losses, _colors(plt, len(losses)), strict=True))
    keys = (("mean_words", "words per completion"), ("distinct_2", "distinct-2"))
    keys += (("exclamations", "'!' per completion"),)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (key, label) in zip(axes, keys, strict=True):
        for loss in losses:
            pts = [(p["kl"], p[key]) for p in section["points"] if p["loss"] == loss]
            ax.scatter(*zip(*pts, strict=True), color=colors[loss], s=12, alpha=0.6, label=loss)
        _reference(ax, section["reference"], key)
        ax.set(xlabel="KL (nats)", ylabel=label)
    axes[0].legend(fontsize=7)
    return _save(plt, fig, out / "sentiment_hacking_vs_kl.png")


def draw_sentiment_figures(plt: Any, section: dict[str, Any], out: Path) -> list[Path]:
    """The three figures, or none when the runs are not on the sentiment task or saved no
    samples with a KL."""
    if not section or not section["points"]:
        return []
    return [
        _frontier_figure(plt, section, out),
        _by_loss_figure(plt, section, out),
        _hacking_figure(plt, section, out),
    ]
