"""Online against offline in `gpo report` (issue 31; Tang et al. 2024, arXiv 2405.08448, Fig. 1):
the win rate against KL of both on one figure, online minus offline at matched KL, and the
held-out preference accuracy of both (Tang et al.: offline classifies better, generates worse).

Only for sweeps with both kinds of run (``online`` true and false in their configs). Matched KL:
for each online run's last checkpoint, the offline win rate at its KL is interpolated linearly
between the two offline runs of the same loss (any beta and seed: their last checkpoints,
sorted by KL) whose KLs bracket it; an online KL outside the offline runs' range gets no
number (never extrapolated). The difference's SE combines the online SE with the two offline
SEs weighted as in the interpolation, taken as independent (they are different runs, judged on
the same held-out prompts, so this SE is a rough one).
"""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path
from typing import Any

from gpo.experiments.report.collect import RunData, finite
from gpo.experiments.report.figures import _colors, _save

ACCURACY = "eval/rewards/accuracies"


def _last(run: RunData) -> dict[str, Any] | None:
    """The run's last checkpoint with a KL and a win rate."""
    for rec in reversed(run.evals):
        if finite(rec.get("eval/kl")) and finite(rec.get("eval/win_rate")):
            return {
                "run": run.name,
                "loss": run.key[0],
                "beta": run.key[1],
                "seed": run.config.get("seed"),
                "online": bool(run.config.get("online")),
                "step": rec["step"],
                "kl": rec["eval/kl"],
                "win_rate": rec["eval/win_rate"],
                "win_rate_se": rec.get("eval/win_rate_se", math.nan),
                "accuracy": rec.get(ACCURACY, math.nan),
            }
    return None


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


def online_section(runs: list[RunData]) -> dict[str, Any]:
    """The numbers behind the figure ({} unless the sweep has online and offline runs)."""
    finals = [f for f in map(_last, runs) if f is not None]
    if not {True, False} <= {f["online"] for f in finals}:
        return {}
    for f in finals:
        if f["online"]:
            same = [g for g in finals if not g["online"] and g["loss"] == f["loss"]]
            f["matched"] = matched(f, same)
    return {"finals": finals}


def draw_online_figure(plt: Any, section: dict[str, Any], out: Path) -> list[Path]:
    """Win rate (+- SE) against KL, online and offline, a panel per loss."""
    if not section:
        return []
    losses = list(dict.fromkeys(f["loss"] for f in section["finals"]))
    fig, axes = plt.subplots(1, len(losses), figsize=(5.5 * len(losses), 4.2), squeeze=False)
    colors = dict(zip((False, True), _colors(plt, 2), strict=True))
    for ax, loss in zip(axes[0], losses, strict=True):
        for mode in (False, True):
            pts = sorted(
                (f for f in section["finals"] if f["loss"] == loss and f["online"] == mode),
                key=lambda f: f["kl"],
            )
            if pts:
                ax.errorbar(
                    [f["kl"] for f in pts],
                    [f["win_rate"] for f in pts],
                    yerr=[f["win_rate_se"] for f in pts],
                    fmt="o",
                    color=colors[mode],
                    label="online" if mode else "offline",
                    capsize=2,
                )
        ax.set(title=loss, xlabel="KL(pi_theta || pi_ref) (nats)", ylabel="win rate vs pi_ref")
        ax.legend(fontsize=8)
    return [_save(plt, fig, out / "online_vs_offline_win_rate_vs_kl.png")]


def online_markdown(section: dict[str, Any]) -> str:
    if not section:
        return ""
    lines = ["", "## Online against offline: win rate at matched KL, held-out accuracy", ""]
    lines += ["| run | mode | KL | win rate (+- SE) | held-out accuracy | online - offline "
              "at this KL (+- SE) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for f in sorted(section["finals"], key=lambda f: (f["loss"], f["online"], f["kl"])):
        m = f.get("matched")
        diff = "-" if not f["online"] else "outside the offline KL range"
        if m is not None:
            diff = f"{m['difference']:+.3f} +- {m['difference_se']:.3f}"
        lines.append(
            f"| {f['run']} | {'online' if f['online'] else 'offline'} | {f['kl']:.2f} | "
            f"{f['win_rate']:.3f} +- {f['win_rate_se']:.3f} | {f['accuracy']:.3f} | {diff} |"
        )
    return "\n".join(lines) + "\n"
