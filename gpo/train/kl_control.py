"""KL-targeted training: beta is steered so that the policy ends near a chosen KL to pi_ref.

The GPO paper (Tang et al. 2024, §5, Figs. 5-7) reaches a given KL only by sweeping beta; its
loss ``f(beta * rho)`` sets the regularization, so beta is the natural knob. This controller
closes the loop, after the adaptive KL controller of Ziegler et al. (2019, §2.2) for PPO: it
works on ``log beta`` with the log-error ``e = clip(log(KL / KL_ref), -3, 3)`` (KLs below a
tenth of the target are not told apart: Monte Carlo noise near pi_ref):

    log beta <- log beta + gain_i * e * (1 + |e| / 2) * dt + gain_p * (e - e_prev)

- the integral term (``gain_i``, per ``kl_control_steps`` steps: ``dt`` is the time since the
  last update in those units) makes beta climb while the policy is farther than the target and
  fall while it is nearer; its slew grows with the error (``1 + |e| / 2``): a KL 10x off
  moves log beta 20x as far as one 25% off (a linear slew: 10x), so a start beta 100x off
  is corrected within the ramp;
- the proportional-on-change term (``gain_p``) damps that integrator; it is never divided over
  the steps between measurements, so its damping is the same however often it updates;
- ``KL`` is a feed-forward prediction: the KL expected at the next measurement, from a line
  fitted to the recent measurements (:class:`KLTrend`): the controller aims at where the KL
  will be, not where it was;
- working on ``log beta`` makes the gains independent of the loss's beta scale (the six GPO
  losses need betas orders of magnitude apart for the same KL, see `gpo.equivalent_beta`).

beta alone cannot hold the KL of the one-sided losses (all but square) once the training pairs
come round again, nor stop a KL that rises faster than any measurement cadence: with Adam the
parameters move about one learning rate per step whatever beta is. So the learning rate is a
second actuator (:class:`LRBrake`), and :mod:`gpo.train.kl_steering` adds measurement cadence
and overshoot protection (a rollback to the newest state below the target).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

#: The log-error is clipped to +-this (a KL 20x off the target): one wild measurement moves
#: log beta by at most ``gain_i * MAX_ERROR * (1 + MAX_ERROR / 2)`` per ``kl_control_steps``.
MAX_ERROR = 3.0

#: The LR brake's log-error clip (its integral needs no fast slew: the rollback acts on big
#: overshoots, :mod:`gpo.train.kl_steering`).
BRAKE_ERROR = 1.0

#: KLs below this share of the target are not told apart by the error: near pi_ref the Monte
#: Carlo estimate is mostly noise, and the ramp's first aimed-at KLs are tiny.
ERROR_FLOOR = 0.1

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


def log_error(kl: float, target: float, floor: float = 0.0, limit: float = MAX_ERROR) -> float:
    """``clip(log(max(kl, floor) / max(target, floor)), -limit, limit)``; a KL estimate at or
    below 0 (Monte Carlo noise near pi_ref) with no floor counts as the lowest error."""
    kl, target = max(kl, floor), max(target, floor)
    if not kl > 0:
        return -limit
    return max(-limit, min(limit, math.log(kl / target)))


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
        return log_error(kl, target or self.target, ERROR_FLOOR * self.target)

    def update(
        self,
        kl: float,
        dt: float = 1.0,
        target: float | None = None,
        pace: float = 1.0,
    ) -> float:
        """One control step towards ``target`` (default: the final one) from a KL measured or
        predicted, ``dt`` measurement periods after the last step. ``pace`` (the LR brake's
        scale) slows the integral's rise: a braked policy barely moves, so a higher beta shows
        no effect yet, and integrating the error at full speed would wind beta up towards its
        bound. Returns the new beta."""
        if not math.isfinite(kl):
            return self.beta  # an unusable measurement leaves beta as it is
        e = self.error(kl, target)
        change = self.gain_i * e * (1 + abs(e) / 2) * dt * (pace if e > 0 else 1.0)
        if self.last_error is not None:
            change += self.gain_p * (e - self.last_error)
        self.beta = min(self.beta_max, max(self.beta_min, self.beta * math.exp(change)))
        self.last_error = e
        self.updates += 1
        return self.beta


@dataclass
class LRBrake(_PlainState):
    """A learning-rate multiplier in (0, 1]: an integral controller on its log that falls while
    the KL is above the final target and recovers (never above 1) while it is below:

        log scale <- min(0, log scale - gain * clip(log(KL / target), -c, c))

    It brakes only past the target (after the ramp, or during it on a KL on course past the
    target: :mod:`gpo.train.kl_steering` decides), so a run whose beta holds the KL trains at
    its full learning rate; a one-sided loss whose KL beta cannot hold (module docstring) is
    slowed until it stops drifting. A rollback sets the scale directly (:meth:`set`).
    ``gain`` 0 turns it off; the scale never falls below 1% (``LOG_LR_SCALE_MIN``)."""

    target: float
    gain: float
    log_scale: float = 0.0

    @property
    def scale(self) -> float:
        return math.exp(self.log_scale)

    def update(self, kl: float, scale: float = 1.0) -> float:
        if math.isfinite(kl) and self.gain > 0:
            change = self.gain * log_error(kl, self.target, limit=BRAKE_ERROR) * scale
            self.log_scale = min(0.0, max(LOG_LR_SCALE_MIN, self.log_scale - change))
        return self.scale

    def set(self, scale: float) -> float:
        """Set the scale (a rollback's correction), within [1%, 1]."""
        self.log_scale = min(0.0, max(LOG_LR_SCALE_MIN, math.log(max(scale, 1e-12))))
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

    def calibrate(self, kl: float, weight: float = RATIO_SMOOTHING) -> None:
        """Move the running log ratio towards this KL's by ``weight`` (1: set it); skipped while
        either side is still ~0."""
        if self.mu_sq is None or not (self.mu_sq > 1e-6 and kl > 1e-3):
            return
        log_ratio = math.log(kl / self.mu_sq)
        if self.log_ratio is None:
            self.log_ratio = log_ratio
        else:
            self.log_ratio += weight * (log_ratio - self.log_ratio)

    def estimate(self) -> float | None:
        if self.log_ratio is None or self.mu_sq is None:
            return None
        return math.exp(self.log_ratio) * self.mu_sq


@dataclass
class KLTrend(_PlainState):
    """The recent sampled KLs and the line through them: ``level`` (the KL now) and ``slope``
    (nats per step), weighted by each measurement's standard error, over the measurements of the
    last ``window`` steps (at least the last two). Its state is plain lists, checkpointed."""

    window: int
    steps: list[int] = field(default_factory=list)
    kls: list[float] = field(default_factory=list)
    ses: list[float] = field(default_factory=list)

    def add(self, step: int, kl: float, se: float) -> None:
        if math.isfinite(kl):
            self.steps.append(step)
            self.kls.append(kl)
            self.ses.append(se if math.isfinite(se) else 1.0)
        keep = [i for i, s in enumerate(self.steps) if s >= step - self.window]
        keep = sorted(set(keep) | set(range(max(0, len(self.steps) - 2), len(self.steps))))
        self.steps = [self.steps[i] for i in keep]
        self.kls = [self.kls[i] for i in keep]
        self.ses = [self.ses[i] for i in keep]

    def reset(self, step: int, kl: float, se: float) -> None:
        self.steps, self.kls, self.ses = [step], [kl], [se]

    def fit(self, now: int) -> tuple[float, float, float] | None:
        """``(level, slope, level_se)`` at step ``now``; None before any measurement."""
        if not self.steps:
            return None
        if len(self.steps) == 1:
            return self.kls[0], 0.0, self.ses[0]
        w = [1 / max(se, 1e-3) ** 2 for se in self.ses]
        x = [s - now for s in self.steps]
        sw, sx = sum(w), sum(wi * xi for wi, xi in zip(w, x, strict=True))
        sxx = sum(wi * xi * xi for wi, xi in zip(w, x, strict=True))
        sy = sum(wi * yi for wi, yi in zip(w, self.kls, strict=True))
        sxy = sum(wi * xi * yi for wi, xi, yi in zip(w, x, self.kls, strict=True))
        det = sw * sxx - sx * sx
        if det <= 0:
            return sy / sw, 0.0, sw**-0.5
        slope = (sw * sxy - sx * sy) / det
        return (sy - slope * sx) / sw, slope, math.sqrt(sxx / det)
