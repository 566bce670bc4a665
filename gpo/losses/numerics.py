"""Shared numeric guards: input checks, a capped exponential, warn-once."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

#: Largest exponent evaluated exactly by :func:`capped_exp`. Beyond it the exponential is
#: continued by its tangent line, so values stay finite (and squarable in float32, as IUPO
#: needs: ``(e^30)^2 ~ 1e26``) while the gradient keeps pointing the right way.
EXP_CAP = 30.0

# Which warnings this process has emitted: module state on purpose, since "once per process" is
# the contract of warn_once (as with Python's own warnings registry); tests reset it.
_warned: set[str] = set()


class NonFiniteError(ValueError):
    """A loss met NaN/inf inputs or produced a non-finite value (a typed error, so callers never
    match message text)."""


def warn_once(key: str, message: str) -> None:
    """Emit ``message`` as a RuntimeWarning the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def reset_warnings() -> None:
    """Forget which warnings were emitted (for tests)."""
    _warned.clear()


def capped_exp(t: Tensor, what: str) -> Tensor:
    """``exp(t)`` for ``t <= EXP_CAP``; the tangent line ``e^C (1 + t - C)`` above it.

    The continuation is convex, increasing and finite for any finite ``t``; its derivative is
    ``e^C`` (not zero, unlike a hard clamp). Warns once per ``what`` when the cap is hit.
    """
    over = t > EXP_CAP
    if bool(over.any()):
        warn_once(
            f"capped_exp:{what}",
            f"{what}: exponent above {EXP_CAP:g} nats; exp() continued linearly beyond the cap "
            "to stay finite (see gpo.losses.numerics.EXP_CAP). Values there are not the exact "
            "formula.",
        )
    exact = torch.exp(torch.clamp(t, max=EXP_CAP))
    linear = math.exp(EXP_CAP) * (1.0 + t - EXP_CAP)
    return torch.where(over, linear, exact)


def as_float(x: Tensor) -> Tensor:
    """Upcast half-precision inputs: losses are computed in at least float32."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_beta(beta: float) -> float:
    """Return ``beta`` as a float, or raise if it is not a finite positive number."""
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a positive number, got {beta!r}") from None
    if not math.isfinite(b) or b <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    return b


def check_finite(name: str, x: Tensor) -> None:
    """Raise :class:`NonFiniteError` naming ``name`` and the first bad index if ``x`` has
    NaN/inf."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        idx = int(bad.flatten().nonzero()[0])
        raise NonFiniteError(
            f"{name} has {int(bad.sum())} non-finite value(s) (first at flat index {idx}: "
            f"{x.flatten()[idx].item()}); losses need finite inputs"
        )


def check_logps(validate: bool = True, **tensors: Tensor) -> tuple[Tensor, ...]:
    """Validate sequence log-prob tensors: tensors, same shape, floating, finite.

    ``validate=False`` only upcasts: the trainer's hot path, where each check would cost a host
    sync per micro-step and its non-finite guard already catches bad values once per step."""
    if not validate:
        return tuple(as_float(t) for t in tensors.values())
    shapes = {}
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        shapes[name] = tuple(t.shape)
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k}={list(v)}" for k, v in shapes.items())
        raise ValueError(f"log-prob tensors must have the same shape, got {listed}")
    for name, t in tensors.items():
        check_finite(name, t)
    return tuple(as_float(t) for t in tensors.values())
