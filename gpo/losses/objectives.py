"""Training objectives: what the trainer calls on the four sequence log-prob tensors.

:data:`OBJECTIVES` is the single source of objective names (CLI choices, errors): every GPO loss
of :data:`gpo.LOSSES` by its name, and ``family:divergence`` for the f-divergence families
(``fdpo:js``, ``iupo:js``, ``fipo:alpha``, ...). ``family:alpha=0.3`` sets the alpha-divergence
coefficient; ``pkg.module:func`` (or any callable ``f(v)``) is a user GPO loss.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from gpo.losses.analysis import require_decreasing_at_zero
from gpo.losses.divergences import (
    DIVERGENCES,
    Divergence,
    fdpo_loss,
    fipo_loss,
    iupo_loss,
    resolve_divergence,
)
from gpo.losses.family import (
    LOSS_ALIASES,
    LOSSES,
    Loss,
    PreferenceLoss,
    alias_note,
    preference_loss,
)


class Objective(Protocol):
    name: str

    def __call__(
        self, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float, *, validate: bool = True
    ) -> PreferenceLoss:
        """Per-pair losses and rho; ``validate=False`` skips the finiteness checks."""
        ...


@dataclass(frozen=True)
class GPOObjective:
    """``f(beta * rho)`` for a GPO loss ``f`` (Tang et al. 2024, eq. 4)."""

    loss: Loss

    @property
    def name(self) -> str:
        return self.loss.name

    def __call__(
        self, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float, *, validate: bool = True
    ) -> PreferenceLoss:
        return preference_loss(self.loss, pc, pr, rc, rr, beta, validate=validate)


@dataclass(frozen=True)
class Family:
    """An f-divergence family: its loss function and, for ``gpo losses``, its formula."""

    fn: Callable[..., PreferenceLoss]
    formula: str
    source: str


FAMILIES: dict[str, Family] = {
    "fdpo": Family(
        fdpo_loss, "-log sigmoid(beta f'(pi/pi_ref)(y_w) - beta f'(pi/pi_ref)(y_l))", "UPO eq. 5"
    ),
    "iupo": Family(
        iupo_loss,
        "(f'(pi(y_w)/pi(y_l)) - f'(pi_ref(y_w)/pi_ref(y_l)) - 1/(2 beta))^2",
        "UPO eq. 23-24",
    ),
    "fipo": Family(
        fipo_loss, "(f'(pi/pi_ref)(y_w) - f'(pi/pi_ref)(y_l) - 1/(2 beta))^2", "TRL ipo + f"
    ),
}


@dataclass(frozen=True)
class DivergenceObjective:
    """An f-divergence family (f-DPO, IUPO, f-IPO) with a fixed divergence."""

    family: str
    divergence: Divergence

    @property
    def name(self) -> str:
        return f"{self.family}:{self.divergence.name}"

    def __call__(
        self, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float, *, validate: bool = True
    ) -> PreferenceLoss:
        fn = FAMILIES[self.family].fn
        return fn(pc, pr, rc, rr, beta, self.divergence, validate=validate)


OBJECTIVES: dict[str, Objective] = {
    **{name: GPOObjective(loss) for name, loss in LOSSES.items()},
    **{
        f"{fam}:{div}": DivergenceObjective(fam, d)
        for fam in FAMILIES
        for div, d in DIVERGENCES.items()
    },
}


#: TRL names with no exact one-name equivalent: what to use instead.
TRL_HINTS = {
    "ipo": "TRL's ipo is `--loss iupo:reverse_kl --logp-reduction mean` at beta = TRL's beta "
    "(its tau; TRL averages log-probs per token, gpo sums them unless told otherwise); "
    "`--loss square` at beta = 2 tau is the same up to the factor beta^2",
    "robust": "not in gpo; the nearest is `--loss logistic` (TRL's sigmoid)",
    "exo_pair": "not in gpo",
    "nca_pair": "not in gpo",
    "bco_pair": "not in gpo",
    "sppo_hard": "not in gpo",
    "aot": "not in gpo",
    "aot_pair": "not in gpo",
    "aot_unpaired": "not in gpo",
    "apo_zero": "not in gpo",
    "apo_down": "not in gpo",
    "discopop": "not in gpo",
    "sft": "not a preference loss; gpo trains preference objectives only",
    "sigmoid_norm": "`--loss logistic --logp-reduction mean` (TRL's sigmoid on per-token mean "
    "log-probs)",
}


def resolve_objective(spec: str | Objective | Callable[[Tensor], Tensor]) -> Objective:
    """An objective from a registered name, ``family:alpha=A``, ``pkg.module:func`` or callable.

    A user GPO loss must decrease at 0 (:func:`gpo.losses.analysis.require_decreasing_at_zero`):
    checked here, once, so nothing trains with one that favours rejected responses.
    """
    if not isinstance(spec, str):
        if hasattr(spec, "name") and callable(spec) and not isinstance(spec, Loss):
            return spec  # type: ignore[return-value]
        return GPOObjective(require_decreasing_at_zero(spec))  # type: ignore[arg-type]
    if spec in OBJECTIVES or spec in LOSS_ALIASES:
        return OBJECTIVES[LOSS_ALIASES.get(spec, spec)]
    if spec in TRL_HINTS:
        raise ValueError(f"unknown loss {spec!r} (a TRL loss_type): {TRL_HINTS[spec]}")
    family, _, rest = spec.partition(":")
    if family in FAMILIES and rest.startswith("alpha="):
        try:
            alpha = float(rest.removeprefix("alpha="))
        except ValueError:
            raise ValueError(f"bad alpha in {spec!r}: expected e.g. {family}:alpha=0.3") from None
        return DivergenceObjective(family, resolve_divergence("alpha", alpha))
    if ":" in spec and family not in FAMILIES:
        return GPOObjective(require_decreasing_at_zero(spec))
    close = difflib.get_close_matches(spec, [*OBJECTIVES, *LOSS_ALIASES], n=1)
    raise ValueError(
        f"unknown loss {spec!r}{f' (did you mean {close[0]!r}?)' if close else ''}: valid names "
        f"are {', '.join(OBJECTIVES)}; aliases {alias_note()}; also 'family:alpha=A' or a "
        "dotted path 'pkg.module:func'"
    )
