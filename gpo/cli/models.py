"""``gpo models tiny OUT``: write a tiny random model and tokenizer (:mod:`gpo.models.tiny`), the
fastest way to try ``gpo train`` end to end (seconds on a laptop CPU, nothing downloaded)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any


def cmd_tiny(args: argparse.Namespace) -> int:
    from gpo.models.tiny import tiny_model_and_tokenizer  # torch: only for this command

    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: already exists and is not an empty folder; choose a new OUT")
    if args.layers < 1 or args.hidden < 8 or args.hidden % 8:
        raise ValueError(  # 4 attention heads of an even size (rotary embeddings)
            f"--layers must be at least 1 and --hidden a multiple of 8, "
            f"got {args.layers} and {args.hidden}"
        )
    model, tokenizer = tiny_model_and_tokenizer(
        n_layers=args.layers, hidden=args.hidden, seed=args.seed
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote a tiny random Llama ({n:,} parameters, {len(tokenizer)} tokens) to {out}")
    print(f"try: {shlex.join(['gpo', 'train', '--model', str(out), '--max-steps', '5'])}")
    return 0


def add_models_parser(sub: Any) -> None:
    """Register ``gpo models`` (tiny) on the top-level subparsers."""
    models = sub.add_parser("models", help="make models for trying gpo")
    msub = models.add_subparsers(dest="models_command", required=True)
    p = msub.add_parser(
        "tiny",
        help="write a tiny random Llama + word-level tokenizer (with a chat template) to OUT, "
        "loadable with `gpo train --model OUT`",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="a new (or empty) folder")
    p.add_argument("--layers", type=int, default=2, help="transformer layers (default: 2)")
    p.add_argument("--hidden", type=int, default=32, help="hidden size (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: 0)")
    p.set_defaults(func=cmd_tiny)
