"""gpo: offline preference optimization with the GPO loss family, f-DPO and IUPO."""

from gpo.losses import (
    DIVERGENCES,
    LOSSES,
    Divergence,
    Loss,
    LossReport,
    PreferenceLoss,
    alpha_divergence,
    analyze,
    equivalent_beta,
    fdpo_loss,
    fipo_loss,
    gpo_loss,
    iupo_loss,
    log_ratio_difference,
    preference_loss,
    resolve_divergence,
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
