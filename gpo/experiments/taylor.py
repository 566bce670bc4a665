"""Near ``rho = 0`` every smooth GPO loss acts like IPO (Tang et al. 2024, §4.1 and App. B.2):
a numerical check on gradients.

Second-order Taylor expansion of a loss ``f`` with ``f'(0) < 0 < f''(0)``:
``f(beta rho) ~ f(0) + f'(0) beta rho + f''(0) beta^2 rho^2 / 2``. With the IPO-equivalent
``beta' = s beta``, ``s = |f''(0) / f'(0)|`` (:func:`gpo.analyze`'s ``strength``), and
``K = f'(0)^2 / (2 f''(0))``, the scaled square loss ``K (beta' rho - 1)^2`` has the same expansion
up to a constant, and ``K`` is the only scale for which it does (any other scale only rescales the
learning rate, but breaks the comparison). Gradients in ``rho``:

* GPO: ``g(rho) = beta f'(beta rho)``;
* IPO-equivalent: ``G(rho) = K beta' sq'(beta' rho) = |f'(0)| beta (beta' rho - 1)``, where
  ``sq(v) = (v - 1)^2`` is the registered ``square`` loss, differentiated by
  :func:`gpo.losses.analysis.derivatives` like ``f``.

The reported error is relative to the gradient at the origin, ``|G(0)| = |f'(0)| beta``:
``err(rho) = |g(rho) - G(rho)| / (|f'(0)| beta) = |f'(v) - f'(0) - f''(0) v| / |f'(0)|`` with
``v = beta rho``; the worse of ``+rho`` and ``-rho`` is kept. It depends on ``rho`` and ``beta``
only through ``v``, vanishes as ``rho -> 0`` like ``|f'''(0)| v^2 / (2 |f'(0)|)`` (or faster when
``f'''(0) = 0``), and is identically 0 where ``f`` is itself quadratic. The fitted ``order`` is the
log-log slope of ``err`` against ``|rho|`` over points with ``v <= FIT_MAX_V`` and
``err > FIT_MIN_ERR`` (above float64 round-off).

Losses with no IPO-equivalent are skipped, with the reason recorded: ``f''(0) = 0`` (zero
strength, e.g. hinge, which is linear around 0 so its expansion has no quadratic term),
``f''(0) < 0`` (no regularizing quadratic term) or a kink at 0 (``f''(0)`` infinite).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpo.experiments.run import run_experiment
from gpo.io import pyplot
from gpo.losses.analysis import LossReport, analyze, derivatives
from gpo.losses.family import LOSSES, resolve_loss
from gpo.losses.numerics import check_beta

#: The square loss the others are compared with (IPO, paper Table 1).
IPO_LOSS = "square"
FIT_MAX_V = 0.1
FIT_MIN_ERR = 1e-12


@dataclass
class TaylorConfig:
    """Resolved settings of ``gpo experiment taylor``."""

    losses: list[str] = field(default_factory=lambda: list(LOSSES))  # names or pkg.module:func
    betas: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0])  # betas compared
    rho_min: float = 1e-3  # smallest |rho| of the grid
    rho_max: float = 1.0  # largest |rho| of the grid
    points: int = 61  # |rho| grid points (log-spaced)

    def __post_init__(self) -> None:
        names = [resolve_loss(name).name for name in self.losses]
        self.losses = list(dict.fromkeys(names))  # built-ins plus --loss, without repeats
        self.betas = sorted(set(check_beta(b) for b in self.betas))
        if not self.losses or not self.betas:
            raise ValueError("taylor: need at least one loss and one beta")
        if not (0 < self.rho_min < self.rho_max) or not math.isfinite(self.rho_max):
            raise ValueError("taylor: need 0 < rho_min < rho_max < inf")
        if self.points < 2:
            raise ValueError("taylor: points must be >= 2")


def skip_reason(report: LossReport) -> str | None:
    """Why a loss has no IPO-equivalent (None if it has one)."""
    if not math.isfinite(report.d2f0):
        return "kink at 0 (f''(0) infinite): not smooth, no Taylor expansion"
    if report.d2f0 == 0:
        return "f''(0) = 0: zero regularization strength, no IPO-equivalent beta"
    if report.d2f0 < 0:
        return "f''(0) < 0: concave at 0, the quadratic term does not regularize"
    return None


def gradient_error(report: LossReport, rho: np.ndarray, beta: float) -> np.ndarray:
    """``|g(rho) - G(rho)| / (|f'(0)| beta)`` at each ``rho`` (see the module docstring)."""
    s = report.strength
    k = report.df0**2 / (2 * report.d2f0)
    r = torch.as_tensor(rho, dtype=torch.float64)
    g = beta * derivatives(report.name, beta * r)[1]
    big_g = k * beta * s * derivatives(IPO_LOSS, beta * s * r)[1]
    return ((g - big_g).abs() / (abs(report.df0) * beta)).numpy()


def fit_order(rho: np.ndarray, errors: dict[str, np.ndarray]) -> tuple[float | None, float | None]:
    """``(k, C)`` of ``err ~ C v^k``, ``v = beta |rho|``, pooled over betas (None if exact)."""
    vs, es = [], []
    for key, err in errors.items():
        v = float(key) * rho
        keep = (v <= FIT_MAX_V) & (err > FIT_MIN_ERR)
        vs.append(v[keep])
        es.append(err[keep])
    v, e = np.concatenate(vs), np.concatenate(es)
    if len(v) < 3:
        return None, None
    k, log_c = np.polyfit(np.log(v), np.log(e), 1)
    return float(k), float(math.exp(log_c))


def run_taylor(cfg: TaylorConfig) -> dict[str, Any]:
    """Relative gradient error against ``|rho|`` per loss and beta, plus a fitted order."""
    start = time.perf_counter()
    rho = np.geomspace(cfg.rho_min, cfg.rho_max, cfg.points)
    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in cfg.losses:
        report = analyze(name)
        reason = skip_reason(report)
        if reason is not None:
            skipped[name] = reason
            continue
        errors = {
            repr(b): np.maximum(gradient_error(report, rho, b), gradient_error(report, -rho, b))
            for b in cfg.betas
        }
        order, const = fit_order(rho, errors)
        out[name] = {
            "df0": report.df0,
            "d2f0": report.d2f0,
            "strength": report.strength,
            "order": order,
            "constant": const,
            "max_error_small_v": float(
                max(
                    float(np.max(e[float(k) * rho <= FIT_MAX_V], initial=0.0))
                    for k, e in errors.items()
                )
            ),
            "betas": {
                k: {"beta_ipo": report.strength * float(k), "error": e.tolist()}
                for k, e in errors.items()
            },
        }
    return {
        "experiment": "taylor",
        "config": cfg,
        "ipo_loss": IPO_LOSS,
        "rho": rho.tolist(),
        "losses": out,
        "skipped": skipped,
        "seconds": time.perf_counter() - start,
    }


def plot_taylor(results: dict[str, Any], path: Path) -> Path:
    """One panel per loss: relative gradient error against |rho| (log-log), a line per beta."""
    plt = pyplot()
    names = list(results["losses"])
    rho = np.asarray(results["rho"])
    floor = 1e-17  # exact zeros drawn at the floor of the axis
    ncol = min(len(names), 3) or 1
    nrow = max(math.ceil(len(names) / ncol), 1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        r = results["losses"][name]
        for key, data in r["betas"].items():
            err = np.maximum(np.asarray(data["error"]), floor)
            ax.loglog(rho, err, label=f"β={key} (β'={data['beta_ipo']:g})")
        order = "exact near 0" if r["order"] is None else f"order ≈ {r['order']:.2f}"
        ax.set_title(f"{name}: strength {r['strength']:g}, {order}", fontsize=9)
        ax.set_ylim(floor / 3, 1e3)
        ax.set_xlabel("|ρ|")
        ax.set_ylabel("rel. gradient error")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    skipped = "; ".join(f"{k}: {v}" for k, v in results["skipped"].items())
    fig.suptitle(
        "GPO vs IPO-equivalent square loss: |∇f(βρ) - ∇K(β'ρ-1)²| / |∇ at 0| "
        f"(exact zeros drawn at {floor:g})" + (f"\nskipped: {skipped}" if skipped else ""),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(results: dict[str, Any]) -> str:
    """Per loss: strength, fitted ``err ~ C (beta |rho|)^k``, error at the smallest |rho|."""
    cfg: TaylorConfig = results["config"]
    rho0 = results["rho"][0]
    rows = [
        ["loss", "strength", "order k", "C", *[f"err β={b:g} |ρ|={rho0:.0e}" for b in cfg.betas]]
    ]
    for name, r in results["losses"].items():
        exact = r["order"] is None
        order = "exact" if exact else f"{r['order']:.2f}"
        const = "-" if exact else f"{r['constant']:.3g}"
        errs = [f"{r['betas'][repr(b)]['error'][0]:.2e}" for b in cfg.betas]
        rows.append([name, f"{r['strength']:g}", order, const, *errs])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(
        0,
        "relative gradient error vs the IPO-equivalent square loss at beta' = strength * beta; "
        f"fit err ~ C (beta |rho|)^k over beta |rho| <= {FIT_MAX_V:g}",
    )
    lines += [f"skipped {k}: {v}" for k, v in results["skipped"].items()]
    return "\n".join(lines)


def main(cfg: TaylorConfig, out: str | Path | None = None, plot: bool = True) -> Path:
    """Run the experiment end to end; returns the run folder."""
    plotter = plot_taylor if plot else None
    return run_experiment("taylor", cfg, run_taylor, plotter, format_table, out)
