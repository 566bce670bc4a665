"""gpo: offline preference optimization with the GPO loss family, f-DPO and IUPO.

The loss API (:mod:`gpo.losses`) is re-exported here and imported on first use, so that
importing a light module of gpo (a sweep worker unpickling its task) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("gpo.losses"), name)
    raise AttributeError(f"module 'gpo' has no attribute {name!r}")
