"""The public math of gpo: GPO losses, f-divergence objectives and their analysis.

- :mod:`gpo.losses.family`: the six GPO losses ``f`` and ``E[f(beta * rho)]`` (Tang et al. 2024).
- :mod:`gpo.losses.divergences`: f-DPO, IUPO and f-IPO over f-divergences (Sun et al. 2024).
- :mod:`gpo.losses.objectives`: what the trainer calls; :data:`OBJECTIVES`, the names ``--loss``
  accepts.
- :mod:`gpo.losses.analysis`: ``|f''(0)/f'(0)|``, convexity and tail class of a loss.
- :mod:`gpo.losses.numerics`: input checks, the capped exponential, warn-once.

Nothing here imports another part of gpo: every other package builds on this one.
"""

from gpo.losses.analysis import (
    LossReport,
    analyze,
    derivatives_at_zero,
    equivalent_beta,
    require_decreasing_at_zero,
)
from gpo.losses.divergences import (
    DIVERGENCES,
    Divergence,
    alpha_divergence,
    fdpo_loss,
    fipo_loss,
    iupo_loss,
    resolve_divergence,
)
from gpo.losses.family import (
    LOSSES,
    Loss,
    PreferenceLoss,
    gpo_loss,
    log_ratio_difference,
    preference_loss,
    resolve_loss,
)
from gpo.losses.numerics import NonFiniteError
from gpo.losses.objectives import OBJECTIVES, Objective, resolve_objective

__all__ = [
    "DIVERGENCES",
    "LOSSES",
    "OBJECTIVES",
    "Divergence",
    "Loss",
    "LossReport",
    "NonFiniteError",
    "Objective",
    "PreferenceLoss",
    "alpha_divergence",
    "analyze",
    "derivatives_at_zero",
    "equivalent_beta",
    "fdpo_loss",
    "fipo_loss",
    "gpo_loss",
    "iupo_loss",
    "log_ratio_difference",
    "preference_loss",
    "require_decreasing_at_zero",
    "resolve_divergence",
    "resolve_loss",
    "resolve_objective",
]
