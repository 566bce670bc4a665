"""``gpo train``: flags generated from :class:`gpo.train.config.TrainConfig`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gpo.cli.flags import add_dataclass_flags, values_from_args
from gpo.losses.objectives import OBJECTIVES
from gpo.train.config import TrainConfig, load_config


def cmd_train(args: argparse.Namespace) -> int:
    from gpo.experiments.executors.secrets import apply_secret_options  # `gpo sweep`'s
    from gpo.train.interrupt import Interrupted
    from gpo.train.trainer import train  # torch, transformers: only when training

    cfg = load_config(
        args.config, {**values_from_args(args, TrainConfig), **apply_secret_options()}
    )
    try:
        summary = train(cfg)
    except Interrupted as e:  # a checkpoint was written: say how to go on, no traceback
        print(f"gpo: {e}", file=sys.stderr)
        return e.exit_code
    print(f"run folder: {summary['run_dir']}")
    return 0


def add_train_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="preference-optimize a causal LM (defaults: embedded SmolLM2, "
        "LoRA, built-in gold data, logistic loss)",
    )
    p.add_argument("--config", metavar="YAML", help="config file; flags below override it")
    add_dataclass_flags(
        p,
        TrainConfig,
        {
            "loss": f"one of {', '.join(OBJECTIVES)}; 'fdpo:alpha=A' (etc.) or 'pkg.module:func' "
            "(`gpo losses` lists them; importing PKG.MODULE runs its code, as running a "
            "script would: use only code you trust, from the command line, a config file or a "
            "sweep config alike)",
            "model": "HF hub name or local folder; 'smollm2' = embedded SmolLM2-135M-Instruct",
            "data": "jsonl/json/parquet/csv file, saved dataset folder, hub name, or 'gold'",
        },
    )
    p.set_defaults(func=cmd_train)
