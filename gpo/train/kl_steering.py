"""The KL controller in a run (:mod:`gpo.train.kl_control` holds its parts): when to measure,
what each measurement changes, and the rollback that undoes an overshoot.

- **Cadence.** A measurement samples the policy on a few rotating held-out prompts. It comes
  every ``kl_control_steps`` steps once the KL has settled, and more often while it moves: the
  next one is due when the fitted slope would move the KL by half the tolerance band, but not
  sooner than ``kl_control_min_steps``. A measurement after ``n`` steps samples
  ``kl_control_prompts * n / kl_control_steps`` prompts (at least 8): frequent measurements
  are smaller, so sampling costs about the same per step whatever the cadence.
- **Overshoot protection.** The one-sided losses (all but square) cannot pull a policy back.
  The second of two measurements in a row whose fitted KL (the line through the recent
  measurements, :class:`~gpo.train.kl_control.KLTrend`, less noisy than one) and raw KL are
  below the upper half of the tolerance band by their standard error keeps a copy of the
  trainable weights and the optimizer state, in host memory. When the fitted KL exceeds the
  target by more than twice its standard error, the run returns to that copy (the step count
  and data order go on) with the learning rate cut by the ratio of the KL rate that the
  target allows (over the rest of the ramp or half the steps left) to the one just seen, at
  most halved.
- **Outcome.** ``summary.json`` gains ``kl_target_met``: the final KL within ``kl_tolerance``
  (25%) of the target; a miss ends with a one-line warning saying which way and what to try.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gpo.train.kl_control import BetaController, KLTrend, LRBrake, ProxyCalibration

#: The fewest prompts a measurement samples (x ``kl_samples`` completions each).
MIN_PROMPTS = 8

#: A rollback aims to reach the target again over this share of the steps left (at least the
#: rest of the ramp), and cuts the learning rate by at most 0.5 and at least to 1%.
ROLLBACK_REACH = 0.5

#: ``measure(indices, step)``: KL(pi_theta || pi_ref) on the held-out prompts with these indices
#: after optimizer step ``step`` (which seeds the sampling); returns (mean, standard error).
MeasureKL = Callable[[list[int], int], tuple[float, float]]

#: What a step asks of every process: nothing, keep a copy of the state, or go back to it.
NONE, SNAPSHOT, ROLLBACK = 0, 1, 2


def rotating_window(n_total: int, size: int, index: int) -> list[int]:
    """The ``index``-th window of ``size`` indices over ``range(n_total)``, wrapping around: each
    measurement samples the next prompts, so the controller sees the whole held-out set in turn."""
    size = min(size, n_total)
    start = (index * size) % n_total
    return [(start + k) % n_total for k in range(size)]


class Snapshot:
    """The trainable weights and the optimizer state at a measurement below the target."""

    def __init__(self, params: Sequence[torch.Tensor], optimizer: Any) -> None:
        self.weights = [p.detach().to("cpu", copy=True) for p in params]
        self.optimizer = copy.deepcopy(optimizer.state_dict())

    def restore(self, params: Sequence[torch.Tensor], optimizer: Any) -> None:
        with torch.no_grad():
            for p, saved in zip(params, self.weights, strict=True):
                p.copy_(saved)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))


class KLSteering:
    """After each optimizer step it takes that step's ``mean(rho^2)/2`` and, when a measurement
    is due, a sampled KL; it returns what to log and keeps :attr:`beta` and :attr:`lr_scale`
    for the next step, and :attr:`action` for :meth:`act`. Its state goes into every checkpoint
    (the rollback copy does not: a resumed run keeps one again at its next measurement)."""

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
        # No point at KL 0 for the start: Adam's first steps jump, and a line from pi_ref
        # through the first measurement would project that jump onwards.
        self.trend = KLTrend(window=cfg.kl_control_steps)
        self.last_kl: tuple[float, float] | None = None
        self.last_measured = 0  # a resumed run loads these from its checkpoint
        self.next_measure = cfg.kl_control_min_steps
        self.measurements = 0
        self.rollbacks = 0
        self.saved: tuple[int, float, float] | None = None  # step, KL, SE of the snapshot
        self.action = NONE
        self.restored = False  # the next measurement is of the state just rolled back to
        self.was_below = True  # the last measurement was below the band (the start: KL 0)
        self._snapshot: Snapshot | None = None

    @property
    def beta(self) -> float:
        return self.controller.beta

    @property
    def lr_scale(self) -> float:
        """The learning-rate multiplier for the next step (:class:`LRBrake`, rollbacks)."""
        return self.brake.scale

    def reference(self, step: float) -> float:
        """The KL aimed at after ``step``: rising linearly over the first ``kl_ramp`` of the run,
        then ``kl_target``. Training moves the policy away from pi_ref step by step: aimed at
        the final KL from step 1, the controller would lower beta all the way up, and the
        losses that cannot pull the policy back (all but square) would overshoot."""
        ramp = self.cfg.kl_ramp * self.cfg.max_steps
        return self.cfg.kl_target * (min(1.0, step / ramp) if ramp > 0 else 1.0)

    def interval(self, slope: float, last: int) -> int:
        """Steps to the next measurement: the time the KL takes to move half the tolerance
        band at ``slope``, at most twice the ``last`` interval (a KL that has not moved yet
        may be about to), within [kl_control_min_steps, kl_control_steps]."""
        cfg = self.cfg
        band = 0.5 * cfg.kl_tolerance * cfg.kl_target
        steps = min(band / abs(slope) if slope else math.inf, 2 * last)
        return int(max(cfg.kl_control_min_steps, min(cfg.kl_control_steps, steps)))

    def after_step(
        self,
        step: int,
        mu_sq: float,
        measure: MeasureKL | None,
        evaluated: Callable[[], tuple[float, float]] | None = None,
    ) -> dict[str, float]:
        """Update beta and the learning-rate scale after optimizer step ``step`` (whose batch had
        ``mean(rho^2)/2 = mu_sq``); ``measure`` is None on processes that do not sample (they
        take beta, the scale and the action from the main one). ``evaluated``: the KL (+- SE)
        that this step's evaluation measures anyway; a measurement due now or within
        ``kl_control_min_steps`` takes it instead of sampling its own."""
        cfg = self.cfg
        self.action = NONE
        self.proxy.observe_batch(mu_sq)
        logged = {"kl_control/mu_sq_loss": mu_sq, "kl_control/target": self.reference(step)}
        if evaluated is not None and step + cfg.kl_control_min_steps >= self.next_measure:
            logged.update(self._measure(step, lambda _indices, _step: evaluated()))
        elif measure is not None and step >= self.next_measure:
            logged.update(self._measure(step, measure))
        estimate = self.proxy.estimate()
        if cfg.kl_control_signal == "proxy" and measure is not None and self.action != ROLLBACK:
            signal = estimate if estimate is not None else (self.last_kl or (None,))[0]
            if signal is not None:  # every step: a tenth of a measurement period's integral
                self._steer(step, signal, 1 / cfg.kl_control_steps)
        if estimate is not None:
            logged["kl_control/kl_proxy"] = estimate
        logged["kl_control/beta"] = self.controller.beta
        logged["kl_control/lr_scale"] = self.brake.scale
        return logged

    def _measure(self, step: int, measure: MeasureKL) -> dict[str, float]:
        cfg = self.cfg
        elapsed = step - self.last_measured
        size = max(MIN_PROMPTS, math.ceil(cfg.kl_control_prompts * elapsed / cfg.kl_control_steps))
        kl, se = measure(rotating_window(self.n_prompts, size, self.measurements), step)
        self.measurements += 1
        self.last_measured, self.last_kl = step, (kl, se)
        self.trend.add(step, kl, se)
        level, slope, level_se = self.trend.fit(step) or (kl, 0.0, se)
        self.proxy.calibrate(level, weight=1.0)  # anchored on the fitted KL at each measurement
        logged = {"kl_control/kl": kl, "kl_control/kl_se": se, "kl_control/kl_level": level}
        target, upper = cfg.kl_target, cfg.kl_target * (1 + cfg.kl_tolerance / 2)
        if self.restored and kl - 2 * se > target:  # the state rolled back to is over, too
            self.saved = None
            logged["kl_control/snapshot_dropped"] = 1.0
        self.restored = False
        # Decisions rest on the fitted level (one measurement of a few prompts is too noisy),
        # and a snapshot on the measurement too (the fit can dip on a noisy line).
        if cfg.kl_rollback and self.saved is not None and level - 2 * level_se > target:
            self._rollback(step, level)
            logged["kl_control/rollback_to"] = float(self.saved[0])
            return logged
        # Two measurements in a row below the band: one low outlier alone keeps no copy.
        below = max(level + level_se, kl + se) < upper
        if cfg.kl_rollback and below and self.was_below:
            self.action, self.saved = SNAPSHOT, (step, level, level_se)
        self.was_below = below
        self.next_measure = step + self.interval(slope, elapsed)
        if cfg.kl_control_signal == "sampled":
            self._steer(step, kl, elapsed / cfg.kl_control_steps)
        return logged

    def _steer(self, step: int, kl_now: float, dt: float) -> None:
        """One update of beta and the brake from ``kl_now``, aimed at the next measurement: the
        KL predicted there (the trend's slope) against the KL aimed at there."""
        cfg = self.cfg
        fit = self.trend.fit(step)
        slope = fit[1] if fit else 0.0
        ahead = max(0, self.next_measure - step)
        predicted = max(0.0, kl_now + slope * ahead)
        target = self.reference(step + ahead)
        ramp_end = cfg.kl_ramp * cfg.max_steps
        at_ramp_end = kl_now + max(0.0, slope) * max(0.0, ramp_end - step)
        # During the ramp a KL ahead of it is not pushed back unless it is on course to pass
        # the target by the ramp's end: Adam's first steps run ahead of the ramp at any beta.
        on_course = step >= ramp_end or at_ramp_end > cfg.kl_target
        if predicted <= target or on_course:
            self.controller.update(predicted, dt, target, pace=self.brake.scale)
        # The brake holds the final KL (on the same condition during the ramp), and releases
        # whenever the KL is below the KL aimed at.
        if step >= ramp_end:
            self.brake.update(predicted, dt)
        elif predicted < target:
            self.brake.update(predicted * cfg.kl_target / target, dt)
        elif on_course:
            self.brake.update(at_ramp_end, dt)

    def _rollback(self, step: int, kl: float) -> None:
        """Back to the snapshot, with the learning rate cut so that the KL rises to the target
        over the rest of the ramp (or half the steps left), not in the steps just seen."""
        cfg = self.cfg
        assert self.saved is not None
        at, kl_saved, se_saved = self.saved
        rate = (kl - kl_saved) / max(1, step - at)
        reach = max(cfg.kl_ramp * cfg.max_steps - step, ROLLBACK_REACH * (cfg.max_steps - step))
        allowed = max(cfg.kl_target - kl_saved, 0.1 * cfg.kl_target) / max(reach, 1.0)
        self.brake.set(self.brake.scale * max(0.01, min(0.5, allowed / rate)))
        self.controller.last_error = None  # the error before the jump back is not the next's
        self.trend.reset(step, kl_saved, se_saved)
        self.next_measure = step + cfg.kl_control_min_steps
        self.rollbacks += 1
        self.action, self.restored, self.was_below = ROLLBACK, True, False

    def apply(
        self, acc: Any, params: Sequence[torch.Tensor], optimizer: Any, scheduler: Any
    ) -> None:
        """On every process after :meth:`after_step`: take the main process's beta, brake and
        action (with several processes), keep or restore the snapshot (:meth:`act`), and set
        the next step's learning rates to the scheduler's times :attr:`lr_scale`."""
        if acc.num_processes > 1:
            from accelerate.utils import broadcast

            steered = [self.controller.beta, self.brake.log_scale, self.action]
            shared = broadcast(torch.tensor(steered, dtype=torch.float64, device=acc.device))
            self.controller.beta, self.brake.log_scale, action = shared.tolist()
            self.action = int(action)
        self.act(params, optimizer)
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
            group["lr"] = lr * self.lr_scale  # the scheduler's next step recomputes it

    def act(self, params: Sequence[torch.Tensor], optimizer: Any) -> None:
        """On every process, after :attr:`action` was shared: keep or restore the snapshot."""
        if self.action == SNAPSHOT:
            self._snapshot = Snapshot(params, optimizer)
        elif self.action == ROLLBACK and self._snapshot is not None:
            self._snapshot.restore(params, optimizer)

    def summary(self, last_eval: dict[str, float]) -> dict[str, Any]:
        """What ``summary.json`` gets: target, final beta and LR scale, the last KL (the final
        evaluation's, else the last measurement's), whether it is within the tolerance."""
        cfg = self.cfg
        out: dict[str, Any] = {"kl_target": cfg.kl_target, "final_beta": self.beta}
        out.update(final_lr_scale=self.lr_scale, kl_rollbacks=self.rollbacks)
        if "eval/kl" in last_eval:
            out.update(kl=last_eval["eval/kl"], kl_se=last_eval["eval/kl_se"])
        elif self.last_kl is not None:
            out.update(kl=self.last_kl[0], kl_se=self.last_kl[1])
        if "kl" in out:
            out["kl_target_met"] = abs(out["kl"] / cfg.kl_target - 1) <= cfg.kl_tolerance
        return out

    def miss_warning(self, summary: dict[str, Any]) -> str | None:
        """One line when the final KL missed the target: which way, and what to try."""
        if summary.get("kl_target_met", True):
            return None
        cfg, kl = self.cfg, summary["kl"]
        head = (
            f"gpo: warning: KL target missed: the final KL {kl:.3g} +- {summary['kl_se']:.2g} "
            f"nats is {'above' if kl > cfg.kl_target else 'below'} the target {cfg.kl_target:g} "
            f"by {abs(kl / cfg.kl_target - 1):.0%} (tolerance {cfg.kl_tolerance:.0%}); "
        )
        if kl > cfg.kl_target:
            return head + (
                "the policy moved faster than the controller could follow: try a lower "
                "--learning-rate, a larger starting --beta, or more --max-steps"
            )
        return head + (
            "the policy moved too little: try a larger --learning-rate, a smaller starting "
            "--beta, more --max-steps, or a lower --kl-target"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "controller": self.controller.state_dict(),
            "proxy": self.proxy.state_dict(),
            "brake": self.brake.state_dict(),
            "trend": self.trend.state_dict(),
            "last_kl": list(self.last_kl) if self.last_kl else None,
            "last_measured": self.last_measured,
            "next_measure": self.next_measure,
            "measurements": self.measurements,
            "rollbacks": self.rollbacks,
            "was_below": self.was_below,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.proxy.load_state_dict(state["proxy"])
        self.brake.load_state_dict(state.get("brake", {}))  # absent in checkpoints before it
        self.trend.load_state_dict(state.get("trend", {}))
        self.last_kl = tuple(state["last_kl"]) if state["last_kl"] else None  # type: ignore[assignment]
        for key in ("last_measured", "next_measure", "measurements", "rollbacks", "was_below"):
            if key in state:
                setattr(self, key, state[key])
