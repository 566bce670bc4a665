"""The ``gpo`` command line: one module per command group, every argparse parser lives here.

Nothing in gpo imports this package; the commands call into the library below it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gpo.cli.data import add_data_parser
from gpo.cli.experiment import add_experiment_parser
from gpo.cli.export import add_export_parser
from gpo.cli.judge_serve import add_judge_serve_parser
from gpo.cli.losses import add_losses_parser
from gpo.cli.models import add_models_parser
from gpo.cli.sweep import add_sweep_parsers
from gpo.cli.train import add_train_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpo", description="Offline preference optimization of language models."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    add_losses_parser(sub)
    add_train_parser(sub)
    add_experiment_parser(sub)
    add_data_parser(sub)
    add_models_parser(sub)
    add_sweep_parsers(sub)
    add_judge_serve_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. `gpo losses | head`: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except KeyboardInterrupt:  # outside a training step (loading, or a second Ctrl-C)
        if args.debug:
            raise
        print("gpo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        kind = "" if isinstance(e, (ValueError, TypeError)) else f"{type(e).__name__}: "
        message = " ".join(str(e).split())  # one line
        print(f"gpo: error: {kind}{message}", file=sys.stderr)
        return 2
