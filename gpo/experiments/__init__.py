"""The GPO paper's toy experiments (Tang et al. 2024, §4.1-4.2,
App. A.1-A.2).

Each experiment is a thin script over the library: a typed config dataclass, a pure ``run_*``
function that returns the results as a JSON-ready dict, and a ``main`` that prints the resolved
config, writes ``results.json`` plus a PNG into a run folder and prints a summary. The CLI
(``gpo experiment bandit|mog|taylor``) lives in :mod:`gpo.cli.experiment`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpo.experiments.bandit import BanditConfig, run_bandit
    from gpo.experiments.mog import MogConfig, run_mog
    from gpo.experiments.run import run_experiment
    from gpo.experiments.taylor import TaylorConfig, run_taylor

#: Where each name lives; imported on first use (a sweep worker imports
#: ``gpo.experiments.executors.common`` without loading torch).
_HOMES = {
    "BanditConfig": "bandit",
    "run_bandit": "bandit",
    "MogConfig": "mog",
    "run_mog": "mog",
    "run_experiment": "run",
    "TaylorConfig": "taylor",
    "run_taylor": "taylor",
}

__all__ = [
    "BanditConfig",
    "MogConfig",
    "TaylorConfig",
    "run_bandit",
    "run_experiment",
    "run_mog",
    "run_taylor",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"gpo.experiments.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'gpo.experiments' has no attribute {name!r}")
