"""Training objectives: what the trainer calls on the four sequence log-prob tensors.

:data:`OBJECTIVES` is the single source of objective names (CLI choices, errors): every GPO loss
of :data:`gpo.LOSSES` by its name, and ``family:divergence`` for the f-divergence families
(``fdpo:js``, ``iupo:js``, ``fipo:alpha``, ...). ``family:alpha=0.3`` sets the alpha-divergence
coefficient; ``pkg.module:func`` (or any callable ``f(v)``) is a user GPO loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from gpo.divergences import (
    DIVERGENCES,
    Divergence,
    fdpo_loss,
    fipo_loss,
    iupo_loss,
    resolve_divergence,
)
from gpo.losses import LOSSES, Loss, PreferenceLoss, preference_loss, resolve_loss


class Objective(Protocol):
    name: str

    def __call__(
        self, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float
    ) -> PreferenceLoss: ...


@dataclass(frozen=True)
class GPOObjective:
    """``f(beta * rho)`` for a GPO loss ``f`` (Tang et al. 2024, eq. 4)."""

    loss: Loss

    @property
    def name(self) -> str:
        return self.loss.name

    def __call__(
        self, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float
    ) -> PreferenceLoss:
        return preference_loss(self.loss, pc, pr, rc, rr, beta)


FamilyFn = Callable[..., PreferenceLoss]
FAMILIES: dict[str, FamilyFn] = {"fdpo": fdpo_loss, "iupo": iupo_loss, "fipo": fipo_loss}


@dataclass(frozen=True)
class DivergenceObjective:
    """An f-divergence family (f-DPO, IUPO, f-IPO) with a fixed divergence."""

    family: str
    divergence: Divergence

    @property
    def name(self) -> str:
        return f"{self.family}:{self.divergence.name}"

    def __call__(
        self, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float
    ) -> PreferenceLoss:
        return FAMILIES[self.family](pc, pr, rc, rr, beta, self.divergence)


OBJECTIVES: dict[str, Objective] = {
    **{name: GPOObjective(loss) for name, loss in LOSSES.items()},
    **{
        f"{fam}:{div}": DivergenceObjective(fam, d)
        for fam in FAMILIES
        for div, d in DIVERGENCES.items()
    },
}


def resolve_objective(spec: str | Objective | Callable[[Tensor], Tensor]) -> Objective:
    """An objective from a registered name, ``family:alpha=A``, ``pkg.module:func`` or callable."""
    if not isinstance(spec, str):
        if hasattr(spec, "name") and callable(spec) and not isinstance(spec, Loss):
            return spec  # type: ignore[return-value]
        return GPOObjective(resolve_loss(spec))  # type: ignore[arg-type]
    if spec in OBJECTIVES:
        return OBJECTIVES[spec]
    family, _, rest = spec.partition(":")
    if family in FAMILIES and rest.startswith("alpha="):
        try:
            alpha = float(rest.removeprefix("alpha="))
        except ValueError:
            raise ValueError(f"bad alpha in {spec!r}: expected e.g. {family}:alpha=0.3") from None
        return DivergenceObjective(family, resolve_divergence("alpha", alpha))
    if ":" in spec and family not in FAMILIES:
        return GPOObjective(resolve_loss(spec))
    raise ValueError(
        f"unknown loss {spec!r}: valid names are {', '.join(OBJECTIVES)}; "
        "also 'family:alpha=A' or a dotted path 'pkg.module:func'"
    )
