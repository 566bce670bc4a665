"""The GPO loss family ``E[f(beta * rho)]`` (Tang et al. 2024, eq. 4 and Table 1).

Each ``f`` below is a pure function of ``v = beta * rho`` returning per-example values; the
caller reduces. :data:`LOSSES` is the single registry of loss names: the CLI choices and every
"unknown loss" error are built from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from gpo.io import import_object
from gpo.losses.numerics import (
    NonFiniteError,
    as_float,
    capped_exp,
    check_beta,
    check_finite,
    check_logps,
)

LossFn = Callable[[Tensor], Tensor]


def logistic(v: Tensor) -> Tensor:
    """Logistic log loss ``f(v) = log(1 + exp(-v))``, computed as ``softplus(-v)``.

    Recovers DPO (Rafailov et al. 2023). GPO paper (Tang et al. 2024) Table 1.
    Asymptotics: ``f(v) ~ -v`` as ``v -> -inf``; ``f(v) ~ exp(-v) -> 0`` as ``v -> inf``.
    """
    return F.softplus(-v)


def hinge(v: Tensor) -> Tensor:
    """Hinge loss ``f(v) = max(0, 1 - v)``.

    Recovers SLiC (Zhao et al. 2023) without its SFT term. GPO paper Table 1. Kink at ``v = 1``.
    """
    return torch.relu(1.0 - v)


def square(v: Tensor) -> Tensor:
    """Squared loss ``f(v) = (v - 1)^2``.

    Recovers IPO (Azar et al. 2024): ``(beta rho - 1)^2 = beta^2 (rho - 1/(2 tau))^2`` with
    ``tau = beta / 2`` (the IPO loss of Azar et al.; GPO paper Table 1).
    """
    return (v - 1.0) ** 2


def exponential(v: Tensor) -> Tensor:
    """Exponential loss ``f(v) = exp(-v)`` (Freund and Schapire 1995); new as a preference loss.

    GPO paper Table 1. For ``v < -EXP_CAP`` (30) the value continues along the tangent line so it
    stays finite; a warning is emitted once when that happens (see
    ``gpo.losses.numerics.capped_exp``).
    """
    return capped_exp(-v, "exponential loss")


def truncated_quadratic(v: Tensor) -> Tensor:
    """Truncated quadratic loss ``f(v) = max(0, 1 - v)^2`` (Bartlett et al. 2006); new.

    GPO paper Table 1. Smooth (C^1); second derivative jumps from 2 to 0 at ``v = 1``.
    """
    return torch.relu(1.0 - v) ** 2


def savage(v: Tensor) -> Tensor:
    """Savage loss ``f(v) = 1 / (1 + exp(v))^2 = sigmoid(-v)^2`` (Masnadi-Shirazi and
    Vasconcelos 2008); new. GPO paper Table 1.

    Not convex everywhere: ``f''(v) < 0`` for ``v < -ln 2`` (``gpo.analyze`` reports it).
    Bounded in ``[0, 1]``.
    """
    return torch.sigmoid(-v) ** 2


@dataclass(frozen=True)
class Loss:
    """A GPO loss: the scalar function ``f`` plus what the CLI table shows about it."""

    name: str
    fn: LossFn
    formula: str
    prior_algorithm: str
    aliases: tuple[str, ...] = ()  # other names for exactly this loss at the same beta (TRL's)

    def __call__(self, v: Tensor) -> Tensor:
        return self.fn(v)


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss("logistic", logistic, "log(1 + exp(-v))", "DPO", ("dpo", "sigmoid")),
        Loss("hinge", hinge, "max(0, 1 - v)", "SLiC", ("slic",)),
        Loss("square", square, "(v - 1)^2", "IPO"),
        Loss("exponential", exponential, "exp(-v)", "new"),
        Loss("truncated_quadratic", truncated_quadratic, "max(0, 1 - v)^2", "new"),
        Loss("savage", savage, "1 / (1 + exp(v))^2", "new"),
    )
}

#: Alias -> registered name: ``dpo`` and TRL's ``loss_type="sigmoid"`` are ``logistic``,
#: ``slic`` (TRL's ``hinge``) is ``hinge``; built from :data:`LOSSES`, the one registry.
LOSS_ALIASES: dict[str, str] = {a: loss.name for loss in LOSSES.values() for a in loss.aliases}


def canonical_loss_name(spec: str) -> str:
    """A loss name with an alias replaced by its registered name (anything else unchanged)."""
    return LOSS_ALIASES.get(spec, spec)


def alias_note() -> str:
    """The aliases, for error messages: ``dpo, sigmoid (= logistic); slic (= hinge)``."""
    return "; ".join(
        f"{', '.join(loss.aliases)} (= {loss.name})" for loss in LOSSES.values() if loss.aliases
    )


def _import_path(path: str) -> object:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(
            f"unknown loss {path!r}: valid names are {', '.join(LOSSES)}, "
            "or a dotted path 'pkg.module:func'"
        )
    return import_object(path, "loss")


def resolve_loss(loss: str | Loss | LossFn) -> Loss:
    """Turn a registered name, a ``pkg.module:func`` path or a callable into a :class:`Loss`."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        loss = canonical_loss_name(loss)
        if loss in LOSSES:
            return LOSSES[loss]
        if ":" not in loss:
            raise ValueError(
                f"unknown loss {loss!r}: valid names are {', '.join(LOSSES)} "
                f"(aliases: {alias_note()}), or a dotted path 'pkg.module:func'"
            )
        fn = _import_path(loss)
        name = loss
    else:
        fn = loss
        name = getattr(loss, "__name__", type(loss).__name__)
    if isinstance(fn, Loss):
        return fn
    if not callable(fn) or inspect.isclass(fn):
        raise TypeError(
            f"a loss must be a function f(v) -> tensor; {name!r} is a {type(fn).__name__}"
        )
    return Loss(name, fn, f"user: {name}", "user")


def gpo_loss(
    loss: str | Loss | LossFn, rho: Tensor, beta: float, *, validate: bool = True
) -> Tensor:
    """Per-example GPO loss ``f(beta * rho)`` (Tang et al. 2024, eq. 4).

    ``loss`` is a name from :data:`LOSSES`, a :class:`Loss`, a callable ``f(v) -> tensor`` or a
    ``"pkg.module:func"`` path. Raises ``ValueError`` on ``beta <= 0``, non-finite ``rho`` or a
    non-finite result (e.g. ``square`` overflowing at ``|v| ~ 1e20`` in float32), the latter two
    as :class:`NonFiniteError`. ``validate=False`` skips the finiteness checks (no host sync):
    for callers that check the reduced loss themselves, like the trainer.
    """
    f = resolve_loss(loss)
    b = check_beta(beta)
    if not isinstance(rho, Tensor) or not rho.is_floating_point():
        raise TypeError(f"rho must be a floating-point torch.Tensor, got {type(rho).__name__}")
    if validate:
        check_finite("rho", rho)
    out = f(as_float(rho) * b)
    if not isinstance(out, Tensor) or out.shape != rho.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise TypeError(
            f"loss {f.name!r} must map a tensor of shape {tuple(rho.shape)} to one of the same "
            f"shape (per-example values), got {got}"
        )
    if validate and not bool(torch.isfinite(out).all()):
        raise NonFiniteError(
            f"loss {f.name!r} gave a non-finite value at beta={b:g}, "
            f"max |beta * rho| = {float((rho * b).abs().max()):.3g}; lower beta or check inputs"
        )
    return out


class PreferenceLoss(NamedTuple):
    """Per-example losses and the log-ratio difference ``rho`` they were computed from."""

    losses: Tensor
    rho: Tensor


def log_ratio_difference(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor
) -> Tensor:
    """``rho = [logp(y_w) - logp_ref(y_w)] - [logp(y_l) - logp_ref(y_l)]``, the log-ratio
    difference inside every GPO loss ``f(beta * rho)`` (Tang et al. 2024, eq. 4)."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def preference_loss(
    loss: str | Loss | LossFn,
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    *,
    validate: bool = True,
) -> PreferenceLoss:
    """GPO loss from the four sequence log-prob tensors; returns ``(losses, rho)``."""
    pc, pr, rc, rr = check_logps(
        validate,
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
    )
    rho = log_ratio_difference(pc, pr, rc, rr)
    return PreferenceLoss(gpo_loss(loss, rho, beta, validate=validate), rho)
