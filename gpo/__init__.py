"""gpo: offline preference optimization with the GPO loss family, f-DPO and IUPO."""

from gpo.analysis import LossReport, analyze, equivalent_beta
from gpo.divergences import (
    DIVERGENCES,
    Divergence,
    alpha_divergence,
    fdpo_loss,
    fipo_loss,
    iupo_loss,
    resolve_divergence,
)
from gpo.losses import (
    LOSSES,
    Loss,
    PreferenceLoss,
    gpo_loss,
    log_ratio_difference,
    preference_loss,
    resolve_loss,
)

__version__ = "0.1.0"

__all__ = [
    "DIVERGENCES",
    "LOSSES",
    "Divergence",
    "Loss",
    "LossReport",
    "PreferenceLoss",
    "alpha_divergence",
    "analyze",
    "equivalent_beta",
    "fdpo_loss",
    "fipo_loss",
    "gpo_loss",
    "iupo_loss",
    "log_ratio_difference",
    "preference_loss",
    "resolve_divergence",
    "resolve_loss",
]
