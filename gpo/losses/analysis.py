"""Regularization analysis of a GPO loss ``f`` (Tang et al. 2024, §4.1).

Near ``rho = 0``: ``E f(beta rho) ~ f(0) + f'(0) beta E[rho] + f''(0) beta^2 E[rho^2] / 2``, so
every smooth GPO loss acts like IPO with regularizer ``|f''(0) / f'(0)| * beta``: the loss's
natural regularization *strength*.

Derivatives come from autograd in float64. Points where autograd does not apply are handled by
finite differences: a kink at 0 (one-sided slopes over ``KINK_STEP`` differ by more than
``KINK_TOL`` beyond what ``f''(0)`` explains) gives
``f'(0)`` = the mean of the one-sided slopes and ``f''(0) = +inf`` (or ``-inf`` for a concave
kink); a callable that autograd cannot differentiate is differenced centrally with step
``FD_STEP`` throughout.

Convexity and tail class are read off a scan of ``v`` over ``SCAN`` (``[-10, 10]``, 4001
points, step 0.005). A point is non-convex where autograd's ``f''`` is below ``-1e-12`` or the
grid's second difference (which also sees kinks) is below ``-1e-6 (1 + |f|)``. A non-convex
region that reaches an end of the scan is reported as open (``-inf`` / ``inf``): the scan cannot
see past it. Tail class (paper §4.1): ``"II"`` if ``f'(v) >= 0`` at some scanned ``v > 0``
(updates stop or reverse there), else ``"I"`` (``f' < 0`` everywhere scanned).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from gpo.losses.family import Loss, LossFn, resolve_loss
from gpo.losses.numerics import check_beta

SCAN = (-10.0, 10.0)
SCAN_POINTS = 4001
FD_STEP = 1e-4
KINK_STEP = 1e-6
KINK_TOL = 1e-3


@dataclass(frozen=True)
class LossReport:
    """What :func:`analyze` finds about a loss; field names are also the JSON keys."""

    name: str
    f0: float
    df0: float
    d2f0: float
    strength: float
    convex: bool
    nonconvex_regions: list[list[float]] = field(default_factory=list)
    tail: str = "I"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _eval(f: Loss, v: Tensor) -> Tensor:
    try:
        out = f(v)
    except Exception as e:
        raise TypeError(f"loss {f.name!r} failed on a float64 tensor: {e}") from e
    if not isinstance(out, Tensor) or out.shape != v.shape:
        raise TypeError(f"loss {f.name!r} must map a tensor elementwise to a tensor of its shape")
    return out


def _autograd_derivatives(f: Loss, v: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(f, f', f'')`` at each point of ``v`` by autograd, or None if autograd can't."""
    x = v.clone().requires_grad_(True)
    try:
        y = _eval(f, x)
        (d1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        if d1.requires_grad:
            (d2,) = torch.autograd.grad(d1.sum(), x, allow_unused=True)
            d2 = torch.zeros_like(v) if d2 is None else d2
        else:  # piecewise-linear: f' has no graph, so f'' = 0
            d2 = torch.zeros_like(v)
    except RuntimeError:
        return None
    return y.detach(), d1.detach(), d2.detach()


def _fd_derivatives(f: Loss, v: Tensor, h: float = FD_STEP) -> tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        lo, mid, hi = _eval(f, v - h), _eval(f, v), _eval(f, v + h)
    return mid, (hi - lo) / (2 * h), (hi - 2 * mid + lo) / (h * h)


def derivatives(loss: str | Loss | LossFn, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(f(v), f'(v), f''(v))`` in float64 (autograd, finite differences as a fallback)."""
    f = resolve_loss(loss)
    v = v.to(torch.float64)
    return _autograd_derivatives(f, v) or _fd_derivatives(f, v)


def derivatives_at_zero(loss: str | Loss | LossFn) -> tuple[float, float, float]:
    """``(f(0), f'(0), f''(0))``; a kink at 0 gives ``f'(0)`` = the mean one-sided slope and
    ``f''(0) = +-inf`` (module docstring)."""
    f = resolve_loss(loss)
    zero = torch.zeros(1, dtype=torch.float64)
    f0, df0, d2f0 = (float(t) for t in derivatives(f, zero))
    h = KINK_STEP
    with torch.no_grad():
        left, mid, right = (float(_eval(f, zero + s)) for s in (-h, 0.0, h))
    slope_left, slope_right = (mid - left) / h, (right - mid) / h
    # For smooth f the one-sided slopes differ by about f''(0) h; a kink leaves a finite jump.
    jump = slope_right - slope_left
    if abs(jump - d2f0 * h) > KINK_TOL * max(1.0, abs(slope_left), abs(slope_right)):
        return mid, (slope_left + slope_right) / 2, math.copysign(math.inf, jump)
    return f0 + 0.0, df0 + 0.0, d2f0 + 0.0  # + 0.0 turns -0.0 into 0.0 for display


def _regions(mask: list[bool], grid: list[float]) -> list[list[float]]:
    out: list[list[float]] = []
    start = None
    for i, bad in enumerate([*mask, False]):
        if bad and start is None:
            start = i
        elif not bad and start is not None:
            lo = -math.inf if start == 0 else grid[start]
            hi = math.inf if i == len(grid) else grid[i - 1]
            out.append([lo, hi])
            start = None
    return out


def _require_decreasing(name: str, df0: float) -> None:
    if math.isfinite(df0) and df0 < 0:
        return
    what = f"f'(0) = {df0:.4g} >= 0" if df0 >= 0 else f"f'(0) = {df0} is not finite"
    raise ValueError(
        f"loss {name!r} has {what}: a GPO loss must decrease at 0, else training favours the "
        "rejected responses (Tang et al. 2024, §3 and App. C); pass allow_invalid=True "
        "(CLI: gpo losses --allow-invalid) to analyze it anyway"
    )


def require_decreasing_at_zero(loss: str | Loss | LossFn) -> Loss:
    """The loss, if ``f'(0) < 0``; else a one-line ``ValueError`` (the check training needs)."""
    f = resolve_loss(loss)
    _require_decreasing(f.name, derivatives_at_zero(f)[1])
    return f


def analyze(
    loss: str | Loss | LossFn,
    allow_invalid: bool = False,
    scan: tuple[float, float] = SCAN,
    points: int = SCAN_POINTS,
) -> LossReport:
    """Derivatives at 0, strength ``|f''(0)/f'(0)|``, convexity scan and tail class.

    Raises ``ValueError`` unless ``f'(0) < 0`` (:func:`require_decreasing_at_zero`), unless
    ``allow_invalid=True``.
    """
    f = resolve_loss(loss)
    f0, df0, d2f0 = derivatives_at_zero(f)
    if not all(math.isfinite(x) for x in (f0, df0)):
        raise ValueError(f"loss {f.name!r}: f(0) or f'(0) is not finite ({f0}, {df0})")
    if not allow_invalid:
        _require_decreasing(f.name, df0)
    strength = abs(d2f0 / df0) if df0 != 0 else math.inf

    grid = torch.linspace(scan[0], scan[1], points, dtype=torch.float64)
    y, d1, d2 = derivatives(f, grid)
    step = (scan[1] - scan[0]) / (points - 1)
    second_diff = torch.zeros_like(y)
    second_diff[1:-1] = (y[2:] - 2 * y[1:-1] + y[:-2]) / step**2
    # A kink between two grid points shows in the second differences of both neighbours.
    nonconvex = (d2 < -1e-12) | (second_diff < -1e-6 * (1 + y.abs()))
    values = grid.tolist()
    regions = _regions(nonconvex.tolist(), values)
    tail = "II" if bool(((d1 >= 0) & (grid > 0)).any()) else "I"
    return LossReport(f.name, f0, df0, d2f0, strength, not regions, regions, tail)


def equivalent_beta(
    beta: float, from_loss: str | Loss | LossFn, to_loss: str | Loss | LossFn
) -> float:
    """The beta for ``to_loss`` with the same natural regularization as ``beta`` for ``from_loss``.

    Equal strength means ``s_from * beta = s_to * beta'`` with ``s = |f''(0)/f'(0)|``
    (Tang et al. 2024, §4.1), e.g. logistic at beta = 0.2 matches square at beta = 0.1.
    """
    b = check_beta(beta)
    s_from, s_to = analyze(from_loss).strength, analyze(to_loss).strength
    for s, which in ((s_from, from_loss), (s_to, to_loss)):
        if s == 0 or not math.isfinite(s):
            name = resolve_loss(which).name
            raise ValueError(
                f"loss {name!r} has regularization strength {s}; no equivalent beta exists "
                "(its f''(0) is 0 or infinite, so the Taylor argument does not apply)"
            )
    return b * s_from / s_to
