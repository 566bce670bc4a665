"""The 3-action bandit of Azar et al. (2023, §5.4) as the GPO paper reuses it (Tang et al. 2024,
§4.1 Fig. 3, App. A.1).

Actions y1..yA, offline pairs ``(winner, loser)`` (default: the total order (y1,y2), (y2,y3),
(y1,y3)), mini-batches of ``batch_size`` pairs drawn uniformly with replacement, a softmax policy
over logits initialised at 0, ``pi_ref`` uniform, Adam. The loss of a batch is the mean over its
pairs of ``f(beta * rho)`` with ``rho = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log
pi_ref(y_l)]``.

Every (loss, beta, seed) configuration advances together: the logits are one tensor of shape
``[n_losses, n_betas, n_seeds, n_actions]`` and one step is one batched computation. Two exact
rewrites make that fast (both are checked against a plain per-config autograd loop in
``tests/test_experiments_bandit.py``):

* A batch enters the loss only through how often each dataset pair was drawn, so the batch mean
  ``(1/n) sum_k f(beta rho_k)`` is evaluated as ``sum_p (count_p / n) f(beta rho_p)`` over the
  few distinct pairs ``p``.
* For a softmax policy ``log pi(y_w) - log pi(y_l) = z_w - z_l`` (the normaliser cancels), so
  ``d rho / dz = e_w - e_l``: the chain rule from ``v = beta rho`` to the logits is a fixed
  matrix. Autograd is needed only for ``f'(v)`` (``f`` may be any user function).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from gpo.experiments.run import run_experiment
from gpo.io import pyplot
from gpo.losses.family import LOSSES, Loss, resolve_loss
from gpo.losses.numerics import check_beta

#: Named offline datasets, as 1-based ``(winner, loser)`` action pairs.
DATASETS: dict[str, tuple[tuple[int, int], ...]] = {
    "total_order": ((1, 2), (2, 3), (1, 3)),
    "cycle": ((1, 2), (2, 3), (3, 1)),
}

_PAIR = re.compile(r"^\s*y?(\d+)\s*>\s*y?(\d+)\s*$")


def parse_pairs(dataset: str) -> list[list[int]]:
    """A dataset name from :data:`DATASETS` or a pair list like ``"1>2,2>3,1>3"``.

    Pairs are 1-based ``winner>loser`` (``y1>y2`` also accepted), separated by commas or spaces.
    """
    if dataset in DATASETS:
        return [list(p) for p in DATASETS[dataset]]
    pairs = []
    for item in re.split(r"[,\s]+", dataset.strip()):
        m = _PAIR.match(item)
        if m is None:
            raise ValueError(
                f"bad dataset {dataset!r}: use one of {', '.join(DATASETS)} or pairs like "
                f"'1>2,2>3,1>3' (winner>loser, 1-based); could not parse {item!r}"
            )
        win, lose = int(m.group(1)), int(m.group(2))
        if win < 1 or lose < 1 or win == lose:
            raise ValueError(
                f"bad pair {item!r} in dataset {dataset!r}: need two distinct ids >= 1"
            )
        pairs.append([win, lose])
    return pairs


@dataclass
class BanditConfig:
    """Resolved settings of ``gpo experiment bandit`` (defaults: the paper's setup)."""

    losses: list[str] = field(default_factory=lambda: list(LOSSES))  # names or pkg.module:func
    betas: list[float] = field(default_factory=lambda: [1.0, 2.0, 10.0])  # one run per beta
    steps: int = 18_000  # Adam steps per run
    seeds: int = 10  # seeds per config
    seed: int = 0  # first seed: seed s uses torch.Generator().manual_seed(seed + s)
    lr: float = 0.01  # Adam learning rate
    batch_size: int = 9  # pairs per step, drawn with replacement
    dataset: str = "total_order"  # total_order | cycle | pairs like '1>2,2>3,3>1' (winner>loser)
    max_points: int = field(default=200, metadata={"flag": "--points"})  # trajectory points kept
    # Derived from `dataset`: 1-based [winner, loser] pairs; actions = largest id used.
    pairs: list[list[int]] = field(init=False)
    n_actions: int = field(init=False)

    def __post_init__(self) -> None:
        self.losses = [resolve_loss(name).name for name in self.losses]
        self.betas = [check_beta(b) for b in self.betas]
        for what, items in (("losses", self.losses), ("betas", self.betas)):
            if not items:
                raise ValueError(f"bandit: need at least one entry in {what}")
            if len(set(items)) != len(items):
                raise ValueError(f"bandit: duplicate {what}: {items}")
        for name, low in (("steps", 1), ("seeds", 1), ("batch_size", 1), ("max_points", 2)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"bandit: {name} must be >= {low}, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"bandit: lr must be a finite number > 0, got {self.lr}")
        self.pairs = parse_pairs(self.dataset)
        self.n_actions = max(max(p) for p in self.pairs)


def beta_key(beta: float) -> str:
    """JSON key of a beta: its decimal string, e.g. ``"1.0"``."""
    return repr(float(beta))


def sample_batches(seed: int, steps: int, batch_size: int, n_pairs: int) -> Tensor:
    """Indices of the dataset pairs in every mini-batch of one seed: ``[steps, batch_size]``.

    Uniform with replacement, from ``torch.Generator().manual_seed(seed)``: a seed's batches do
    not depend on which losses or betas run beside it (common random numbers across configs).
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randint(n_pairs, (steps, batch_size), generator=g)


def record_steps(steps: int, max_points: int) -> list[int]:
    """At most ``max_points`` evenly spaced steps in ``[0, steps]``, both ends included."""
    n = min(max_points, steps + 1)
    return sorted({round(i * steps / (n - 1)) for i in range(n)})


class BanditTrace(NamedTuple):
    """Policy probabilities ``[n_points, n_losses, n_betas, n_seeds, n_actions]`` at ``steps``."""

    steps: list[int]
    probs: Tensor


def _check_outputs(fs: list[Loss], v: Tensor, outs: list[Tensor]) -> None:
    for f, vi, out in zip(fs, v.unbind(0), outs, strict=True):
        if not isinstance(out, Tensor) or out.shape != vi.shape:
            raise TypeError(f"loss {f.name!r} must map a tensor elementwise to one of its shape")


def simulate(cfg: BanditConfig) -> BanditTrace:
    """Train every (loss, beta, seed) policy at once; returns the subsampled trajectories."""
    fs = [resolve_loss(name) for name in cfg.losses]
    n_l, n_b, n_s, n_a, n_p = len(fs), len(cfg.betas), cfg.seeds, cfg.n_actions, len(cfg.pairs)
    dtype = torch.float64  # probabilities near 1 after 18k steps: keep the digits
    pairs = torch.tensor(cfg.pairs) - 1
    # d rho_p / dz = e_{w_p} - e_{l_p}: column p of D.
    d = torch.zeros(n_a, n_p, dtype=dtype)
    d[pairs[:, 0], torch.arange(n_p)] += 1.0
    d[pairs[:, 1], torch.arange(n_p)] -= 1.0
    log_ref = torch.full((n_a,), -math.log(n_a), dtype=dtype)  # pi_ref uniform
    ref_margin = log_ref @ d  # log pi_ref(y_w) - log pi_ref(y_l) per pair (0 here)
    beta = torch.tensor(cfg.betas, dtype=dtype).view(1, n_b, 1, 1)

    # Weight of pair p in the batch of seed s at step t: count / batch_size, [steps, seeds, P].
    batches = torch.stack(
        [sample_batches(cfg.seed + s, cfg.steps, cfg.batch_size, n_p) for s in range(n_s)], dim=1
    )
    weights = torch.nn.functional.one_hot(batches, n_p).sum(2).to(dtype) / cfg.batch_size
    weights_per_step = [w.expand(n_b, n_s, n_p) for w in weights.unbind(0)]

    logits = torch.zeros(n_l, n_b, n_s, n_a, dtype=dtype, requires_grad=True)
    # Adam's update is elementwise (its moments and bias corrections are per entry and the step
    # count is shared), so one Adam over the stacked logits is exactly n_l * n_b * n_s
    # independent Adams. foreach=False: the single-tensor path has the least per-step overhead.
    opt = torch.optim.Adam([logits], lr=cfg.lr, foreach=False)

    points = record_steps(cfg.steps, cfg.max_points)
    probs = torch.empty(len(points), n_l, n_b, n_s, n_a, dtype=dtype)
    k = 0
    for t in range(cfg.steps + 1):
        logp = torch.log_softmax(logits.detach(), dim=-1)
        if t == points[k]:
            _check_finite(logits.detach(), cfg.losses, t)
            probs[k] = logp.exp()
            k += 1
        if t == cfg.steps:
            break
        v = (beta * (logp @ d - ref_margin)).requires_grad_()  # [L, B, S, P]
        outs = [f(vi) for f, vi in zip(fs, v.unbind(0), strict=True)]
        if t == 0:
            _check_outputs(fs, v, outs)
        try:  # grad_outputs = batch weights: the gradient of sum_p w_p f(v_p), per config
            (grad_v,) = torch.autograd.grad(outs, v, grad_outputs=[weights_per_step[t]] * n_l)
        except RuntimeError as e:
            raise TypeError(f"bandit: autograd failed on the losses {cfg.losses}: {e}") from e
        logits.grad = (grad_v * beta) @ d.T
        opt.step()
    return BanditTrace(points, probs)


def _check_finite(logits: Tensor, names: list[str], step: int) -> None:
    bad = ~torch.isfinite(logits).flatten(1).all(dim=1)
    if bool(bad.any()):
        which = [n for n, b in zip(names, bad.tolist(), strict=True) if b]
        raise ValueError(f"bandit: non-finite logits at step {step} for loss(es) {which}")


def mean_ci95(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% Student-t confidence half-width over ``axis`` (NaN with one sample)."""
    from scipy.special import stdtrit

    n = x.shape[axis]
    mean = x.mean(axis=axis)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    half = stdtrit(n - 1, 0.975) * x.std(axis=axis, ddof=1) / math.sqrt(n)
    return mean, half


def summarize(cfg: BanditConfig, trace: BanditTrace) -> dict[str, Any]:
    """JSON-ready results: final mean/CI per loss and beta, and mean/CI trajectories."""
    probs = trace.probs.numpy()  # [T, L, B, S, A]
    mean, half = mean_ci95(probs, axis=3)  # [T, L, B, A]
    final: dict[str, dict[str, Any]] = {}
    traj: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(cfg.losses):
        final[name], traj[name] = {}, {}
        for j, b in enumerate(cfg.betas):
            key = beta_key(b)
            final[name][key] = {"mean": mean[-1, i, j].tolist(), "ci95": half[-1, i, j].tolist()}
            traj[name][key] = {"mean": mean[:, i, j].tolist(), "ci95": half[:, i, j].tolist()}
    return {
        "experiment": "bandit",
        "config": cfg,
        "final": final,
        "trajectory_steps": trace.steps,
        "trajectories": traj,
    }


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the previous setting.

    The bandit's tensors have a few hundred entries: extra threads cannot help, and on a busy
    machine every OpenMP barrier can wait milliseconds for a descheduled thread (measured: 25x
    slower with 2 threads on a loaded 2-core box).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_bandit(cfg: BanditConfig) -> dict[str, Any]:
    """Simulate and summarize; ``results["seconds"]`` is the wall time of the simulation."""
    start = time.perf_counter()
    with single_thread():
        trace = simulate(cfg)
    seconds = time.perf_counter() - start
    return {**summarize(cfg, trace), "seconds": seconds}


def format_table(results: dict[str, Any]) -> str:
    """Final ``pi(y1)`` per loss (rows) and beta (columns), mean +- 95% CI half-width."""
    cfg = results["config"]
    keys = [beta_key(b) for b in cfg.betas]
    rows = [["loss", *[f"beta={k}" for k in keys]]]
    for name, by_beta in results["final"].items():
        cells = []
        for k in keys:
            m, h = by_beta[k]["mean"][0], by_beta[k]["ci95"][0]
            cells.append(f"{m:.3f} ± {h:.3f}" if math.isfinite(h) else f"{m:.3f}")
        rows.append([name, *cells])
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    title = (
        f"final pi(y1) after {cfg.steps} steps (mean ± 95% CI over {cfg.seeds} seeds; "
        f"pi_ref(y1) = {1 / cfg.n_actions:.3f})"
    )
    return "\n".join([title, *lines])


def plot_bandit(results: dict[str, Any], path: Path) -> Path:
    """Grid like the paper's Fig. 3: rows = beta, columns = loss, lines = pi(y_i) with CI bands."""
    plt = pyplot()
    cfg = results["config"]
    keys = [beta_key(b) for b in cfg.betas]
    names = list(results["final"])
    steps = np.asarray(results["trajectory_steps"])
    fig, axes = plt.subplots(
        len(keys),
        len(names),
        figsize=(2.6 * len(names) + 0.6, 2.2 * len(keys) + 0.6),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, key in enumerate(keys):
        for c, name in enumerate(names):
            ax = axes[r][c]
            tr = results["trajectories"][name][key]
            mean, half = np.asarray(tr["mean"]), np.nan_to_num(np.asarray(tr["ci95"]))
            for a in range(cfg.n_actions):
                color = colors[a % len(colors)]
                ax.plot(steps, mean[:, a], color=color, lw=1.4, label=f"y{a + 1}")
                ax.fill_between(
                    steps, mean[:, a] - half[:, a], mean[:, a] + half[:, a], color=color, alpha=0.25
                )
            ax.axhline(1 / cfg.n_actions, color="0.6", lw=0.7, ls=":")
            ax.set_ylim(-0.03, 1.03)
            if r == 0:
                ax.set_title(name, fontsize=10)
            if c == 0:
                ax.set_ylabel(f"beta = {key}\nπ(y_i)")
            if r == len(keys) - 1:
                ax.set_xlabel("step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=cfg.n_actions, fontsize=9)
    fig.suptitle(
        f"bandit ({cfg.dataset}): π(y_i) over training, mean and 95% CI over {cfg.seeds} seeds",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(cfg: BanditConfig, out: str | Path | None = None, plot: bool = True) -> Path:
    """Run the experiment end to end; returns the run folder."""
    plotter = plot_bandit if plot else None
    return run_experiment("bandit", cfg, run_bandit, plotter, format_table, out)
