"""PNG plots of a training run from its ``metrics.jsonl``."""

from __future__ import annotations

import math
from pathlib import Path

from gpo.io import pyplot
from gpo.train.run_record import output
from gpo.train.tracking import read_metrics


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run_dir: Path) -> list[Path]:
    """``training.png`` (loss, accuracy) and, with eval KL, ``kl_vs_mu_sq.png``."""
    plt = pyplot()
    records = read_metrics(run_dir)
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "loss", "loss"),
        (axes[1], "rewards/accuracies", "preference accuracy"),
    ):
        for prefix, style in (("", "-"), ("eval/", "o--")):
            x, y = _series(records, prefix + key)
            if x:
                ax.plot(x, y, style, label=("eval " if prefix else "train ") + label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(output(run_dir, "training.png"), dpi=110)
    plt.close(fig)
    written.append(run_dir / "training.png")

    evals = [r for r in records if "eval/kl" in r and "eval/mu_sq_loss" in r]
    if evals:
        fig, ax = plt.subplots(figsize=(5, 4))
        xs = [r["eval/mu_sq_loss"] for r in evals]
        ys = [r["eval/kl"] for r in evals]
        se = [r.get("eval/kl_se", 0.0) for r in evals]
        ax.errorbar(xs, ys, yerr=[s if math.isfinite(s) else 0.0 for s in se], fmt="o-")
        for r, x, y in zip(evals, xs, ys, strict=True):
            ax.annotate(str(r["step"]), (x, y), fontsize=7)
        ax.set_xlabel("mu-weighted squared loss  E[rho^2]/2  (nats^2, held-out pairs)")
        ax.set_ylabel("KL(pi_theta || pi_ref)  (nats, on-policy MC)")
        ax.set_title("KL vs offline regularizer (labels: step)")
        fig.tight_layout()
        fig.savefig(output(run_dir, "kl_vs_mu_sq.png"), dpi=110)
        plt.close(fig)
        written.append(run_dir / "kl_vs_mu_sq.png")
    return written
