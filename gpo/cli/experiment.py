"""``gpo experiment bandit|mog|taylor``: flags generated from the experiments' config dataclasses
(:mod:`gpo.cli.flags`), so their names, defaults and help are the configs' own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpo.cli.flags import add_dataclass_flags, values_from_args
from gpo.experiments import bandit, mog, taylor
from gpo.losses.family import LOSSES

#: name -> (config class, main(cfg, out, plot), one-line help)
EXPERIMENTS: dict[str, tuple[type, Callable[..., Path], str]] = {
    "bandit": (
        bandit.BanditConfig,
        bandit.main,
        "3-action bandit: pi(y_i) over training per loss and beta (paper Fig. 3)",
    ),
    "mog": (
        mog.MogConfig,
        mog.main,
        "mixture-of-Gaussians counterexample: KL vs mu-weighted squared loss (Fig. 8)",
    ),
    "taylor": (
        taylor.TaylorConfig,
        taylor.main,
        "gradient of each smooth loss vs its IPO-equivalent square loss near rho = 0",
    ),
}


def cmd_experiment(args: argparse.Namespace) -> int:
    config, main, _ = EXPERIMENTS[args.experiment]
    values = values_from_args(args, config)
    extra = getattr(args, "loss", [])
    if extra:  # taylor --loss F: F in addition to the losses (all built-ins by default)
        values["losses"] = [*values.get("losses", LOSSES), *extra]
    main(config(**values), args.out, plot=not args.no_plot)
    return 0


def add_experiment_parser(sub: Any) -> None:
    """Add ``experiment`` and its sub-commands to the ``gpo`` parser's subparsers."""
    p = sub.add_parser("experiment", help="run the GPO paper's toy experiments")
    esub = p.add_subparsers(dest="experiment", required=True)
    for name, (config, _, help_text) in EXPERIMENTS.items():
        doc = sys.modules[config.__module__].__doc__ or ""
        e = esub.add_parser(name, help=help_text, description=doc.split("\n\n")[0] or None)
        add_dataclass_flags(e, config)
        if name == "taylor":
            e.add_argument(
                "--loss",
                action="append",
                default=[],
                metavar="PKG.MODULE:FUNC",
                help=f"also check this loss (repeatable), besides --losses (default: all of "
                f"{', '.join(LOSSES)})",
            )
        e.add_argument("--out", metavar="DIR", help=f"run folder (default: runs/{name}-<time>)")
        e.add_argument("--no-plot", action="store_true", help=f"skip {name}.png")
        e.set_defaults(func=cmd_experiment)
