"""``gpo export RUN --merge OUT``: a run's trained model as a standalone model folder that plain
``transformers`` loads and generates with (:mod:`gpo.models.export`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_export(args: argparse.Namespace) -> int:
    from gpo.models.export import export_merged  # torch and transformers: only for this command

    done = export_merged(args.run, args.merge)
    how = f"LoRA merged into {done.base}" if done.kind == "lora" else "full fine-tuning"
    print(f"wrote {done.out} ({how}; {done.parameters:,} parameters)")
    print(f"load it with: AutoModelForCausalLM.from_pretrained({str(done.out)!r})")
    return 0


def add_export_parser(sub: Any) -> None:
    """Register ``gpo export`` on the top-level subparsers."""
    p = sub.add_parser(
        "export",
        help="write a run's trained model (LoRA merged) with its tokenizer, chat template and "
        "generation config to a new folder that plain transformers loads",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="a gpo train output folder (--out)")
    p.add_argument(
        "--merge",
        type=Path,
        metavar="OUT",
        required=True,
        help="a new (or empty) folder for the merged, standalone model",
    )
    p.set_defaults(func=cmd_export)
