"""KL-targeted training: beta is steered so that the policy ends near a chosen KL to pi_ref.

The GPO paper (Tang et al. 2024, §5, Figs. 5-7) reaches a given KL only by sweeping beta; its
loss ``f(beta * rho)`` sets the regularization, so beta is the natural knob. This controller
closes the loop, after the adaptive KL controller of Ziegler et al. (2019, §2.2) for PPO: it
works on ``log beta`` with the clipped log-error ``e = clip(log(KL / target), -c, c)``:

    log beta <- log beta + gain_i * e + gain_p * (e - e_prev)

- the integral term (``gain_i``) makes beta climb while the policy is farther than the target
  and fall while it is nearer: the offline losses only ever push the policy away from pi_ref,
  at a rate that beta sets, so KL integrates the training and beta must follow its error;
- the proportional-on-change term (``gain_p``) damps that integrator (KL lags beta by many
  steps);
- working on ``log beta`` makes the gains independent of the loss's beta scale (the six GPO
  losses need betas orders of magnitude apart for the same KL, see `gpo.equivalent_beta`).

The signal is either the sampled on-policy KL (the same per-completion Monte Carlo estimate as
the evaluations, on a small rotating set of held-out prompts every ``kl_control_steps`` steps),
or the offline proxy the paper points to (its §5): the mu-weighted squared loss ``E[rho^2]/2``
of each training batch, free to compute, scaled by a ratio that each sampled measurement
recalibrates (the default: on the ``cpu-kl`` preset it ended nearer the target, 27 of 36 runs
within 25% against 24 of 36 with the sampled KL alone; docs/kl-control.md).

beta alone cannot hold the KL of the one-sided losses (all but square) once the training pairs
come round again: with Adam at a constant learning rate, the parameters keep moving about one
learning rate per step whatever beta is. So a second actuator, the :class:`LRBrake`, scales the
learning rate down while the signal is above ``kl_target`` (and back up to 1 below it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

#: The measured KL's log-error is clipped to +-this: one noisy or near-zero measurement moves
#: log beta by at most ``gain * MAX_ERROR``.
MAX_ERROR = 1.0

#: The LR brake's floor (log of 1%): Adam barely moves at 1% of its rate, and a deeper integral
#: would take that much longer to release the brake once the KL falls below the target.
LOG_LR_SCALE_MIN = math.log(0.01)

#: Weight of the newest batch in the running mean of the mu-weighted squared loss.
PROXY_SMOOTHING = 0.2

#: Weight of the newest sampled KL in the running (log-space) KL / mu-weighted-loss ratio: the
#: sampled KL is noisy (heavy-tailed per-completion log ratios), the ratio drifts slowly.
RATIO_SMOOTHING = 0.3


class _PlainState:
    """Checkpointable as JSON: every field of the dataclass is a float, int or None."""

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def log_error(kl: float, target: float) -> float:
    """``clip(log(kl / target), -MAX_ERROR, MAX_ERROR)``; a KL estimate at or below 0 (Monte
    Carlo noise near pi_ref) counts as the lowest error."""
    if not kl > 0:
        return -MAX_ERROR
    return max(-MAX_ERROR, min(MAX_ERROR, math.log(kl / target)))


@dataclass
class BetaController(_PlainState):
    """A proportional-integral controller on ``log beta`` (module docstring). Pure state: every
    field is a float or int, saved with each checkpoint, so a resumed run steers identically."""

    target: float
    beta: float
    gain_i: float
    gain_p: float
    beta_min: float
    beta_max: float
    last_error: float | None = None
    updates: int = 0

    def error(self, kl: float, target: float | None = None) -> float:
        return log_error(kl, target or self.target)

    def update(self, kl: float, scale: float = 1.0, target: float | None = None) -> float:
        """One control step from a KL measurement, towards ``target`` (default: the final one);
        ``scale`` divides the gains of a controller updated more often than once per
        measurement. Returns the new beta, within bounds."""
        if not math.isfinite(kl):
            return self.beta  # an unusable measurement leaves beta as it is
        e = self.error(kl, target)
        change = self.gain_i * e
        if self.last_error is not None:
            change += self.gain_p * (e - self.last_error)
        log_beta = math.log(self.beta) + change * scale
        self.beta = min(self.beta_max, max(self.beta_min, math.exp(log_beta)))
        self.last_error = e
        self.updates += 1
        return self.beta


@dataclass
class LRBrake(_PlainState):
    """A learning-rate multiplier in (0, 1]: an integral controller on its log that falls while
    the KL is above the final target and recovers (never above 1) while it is below:

        log scale <- min(0, log scale - gain * clip(log(KL / target), -c, c))

    It acts only past the target, and only once the aimed-at KL has reached it (after the
    ramp), so a run whose beta holds the KL trains at its full learning rate; a one-sided
    loss whose KL beta cannot hold (module docstring) is slowed until it stops drifting.
    ``gain`` 0 turns it off; the scale never falls below 1% (``LOG_LR_SCALE_MIN``)."""

    target: float
    gain: float
    log_scale: float = 0.0

    @property
    def scale(self) -> float:
        return math.exp(self.log_scale)

    def update(self, kl: float, scale: float = 1.0) -> float:
        if math.isfinite(kl) and self.gain > 0:
            change = self.gain * log_error(kl, self.target) * scale
            self.log_scale = min(0.0, max(LOG_LR_SCALE_MIN, self.log_scale - change))
        return self.scale


@dataclass
class ProxyCalibration(_PlainState):
    """KL estimated from the mu-weighted squared loss: ``KL ~ ratio * E[rho^2]/2``, where
    ``E[rho^2]/2`` is a running mean over training batches and ``ratio`` is set by the latest
    sampled KL (GPO paper §5: the offline loss tracks KL, but loss by loss differently)."""

    mu_sq: float | None = None
    log_ratio: float | None = None

    def observe_batch(self, mu_sq: float) -> None:
        if not math.isfinite(mu_sq):
            return
        if self.mu_sq is None:
            self.mu_sq = mu_sq
        else:
            self.mu_sq += PROXY_SMOOTHING * (mu_sq - self.mu_sq)

    def calibrate(self, kl: float) -> None:
        """Move the running log ratio towards this sampled KL's; skipped while either side is
        still ~0."""
        if self.mu_sq is None or not (self.mu_sq > 1e-6 and kl > 1e-3):
            return
        log_ratio = math.log(kl / self.mu_sq)
        if self.log_ratio is None:
            self.log_ratio = log_ratio
        else:
            self.log_ratio += RATIO_SMOOTHING * (log_ratio - self.log_ratio)

    def estimate(self) -> float | None:
        if self.log_ratio is None or self.mu_sq is None:
            return None
        return math.exp(self.log_ratio) * self.mu_sq


def rotating_window(n_total: int, size: int, index: int) -> list[int]:
    """The ``index``-th window of ``size`` indices over ``range(n_total)``, wrapping around: each
    measurement samples the next prompts, so the controller sees the whole held-out set in turn."""
    size = min(size, n_total)
    start = (index * size) % n_total
    return [(start + k) % n_total for k in range(size)]


#: ``measure(indices, step)``: KL(pi_theta || pi_ref) on the held-out prompts with these indices
#: after optimizer step ``step`` (which seeds the sampling); returns (mean, standard error).
MeasureKL = Callable[[list[int], int], tuple[float, float]]


class KLSteering:
    """The controller in a run: after each optimizer step it takes that step's ``rho`` values
    and, every ``kl_control_steps`` steps, a sampled KL; it returns what to log and keeps
    :attr:`beta` for the next step. Its state goes into every checkpoint."""

    def __init__(self, cfg: Any, n_prompts: int) -> None:
        self.cfg = cfg
        self.n_prompts = n_prompts
        self.controller = BetaController(
            target=cfg.kl_target,
            beta=cfg.beta,
            gain_i=cfg.kl_gain_i,
            gain_p=cfg.kl_gain_p,
            beta_min=cfg.kl_beta_min,
            beta_max=cfg.kl_beta_max,
        )
        self.brake = LRBrake(target=cfg.kl_target, gain=cfg.kl_lr_gain)
        self.proxy = ProxyCalibration()
        self.last_kl: tuple[float, float] | None = None

    @property
    def beta(self) -> float:
        return self.controller.beta

    @property
    def lr_scale(self) -> float:
        """The learning-rate multiplier for the next step (:class:`LRBrake`)."""
        return self.brake.scale

    def after_step(self, step: int, mu_sq: float, measure: MeasureKL | None) -> dict[str, float]:
        """Update beta after optimizer step ``step`` whose batch had ``mean(rho^2)/2 = mu_sq``;
        ``measure`` is None on processes that do not sample (they take beta from the main one)."""
        cfg = self.cfg
        self.proxy.observe_batch(mu_sq)
        target = self.reference(step)
        logged = {"kl_control/mu_sq_loss": mu_sq, "kl_control/target": target}
        measuring = step % cfg.kl_control_steps == 0
        # The brake holds the final KL; the ramp's early transients are beta's to correct.
        braking = target >= cfg.kl_target
        if measuring and measure is not None:
            k = step // cfg.kl_control_steps - 1
            kl, se = measure(rotating_window(self.n_prompts, cfg.kl_control_prompts, k), step)
            self.last_kl = (kl, se)
            self.proxy.calibrate(kl)
            logged.update({"kl_control/kl": kl, "kl_control/kl_se": se})
            if cfg.kl_control_signal == "sampled":
                self.controller.update(kl, target=target)
                if braking:
                    self.brake.update(kl)
        estimate = self.proxy.estimate()
        if cfg.kl_control_signal == "proxy" and measure is not None:
            signal = estimate if estimate is not None else (self.last_kl or (None,))[0]
            if signal is not None:  # spread one measurement's gain over the steps between them
                self.controller.update(signal, scale=1 / cfg.kl_control_steps, target=target)
                if braking:
                    self.brake.update(signal, scale=1 / cfg.kl_control_steps)
        if estimate is not None:
            logged["kl_control/kl_proxy"] = estimate
        logged["kl_control/beta"] = self.controller.beta
        logged["kl_control/lr_scale"] = self.brake.scale
        return logged

    def reference(self, step: int) -> float:
        """The KL aimed at after ``step``: rising linearly over the first ``kl_ramp`` of the run,
        then ``kl_target``. Training moves the policy away from pi_ref step by step: aimed at
        the final KL from step 1, the controller would lower beta all the way up, and the
        losses that cannot pull the policy back (all but square) would overshoot."""
        ramp = self.cfg.kl_ramp * self.cfg.max_steps
        return self.cfg.kl_target * (min(1.0, step / ramp) if ramp > 0 else 1.0)

    def summary(self, last_eval: dict[str, float]) -> dict[str, float]:
        """What ``summary.json`` gets: target, final beta and LR scale, the last measured KL."""
        out = {"kl_target": self.cfg.kl_target, "final_beta": self.beta}
        out["final_lr_scale"] = self.lr_scale
        out.update({k: last_eval[f"eval/{k}"] for k in ("kl", "kl_se") if f"eval/{k}" in last_eval})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "controller": self.controller.state_dict(),
            "proxy": self.proxy.state_dict(),
            "brake": self.brake.state_dict(),
            "last_kl": list(self.last_kl) if self.last_kl else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.proxy.load_state_dict(state["proxy"])
        self.brake.load_state_dict(state.get("brake", {}))  # absent in checkpoints before it
        self.last_kl = tuple(state["last_kl"]) if state["last_kl"] else None  # type: ignore[assignment]
