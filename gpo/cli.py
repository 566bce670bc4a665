"""The ``gpo`` command line."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence

from gpo.analysis import LossReport, analyze
from gpo.config import add_config_flags, load_config, overrides_from_args
from gpo.data_cli import add_data_parser
from gpo.experiments.cli import add_experiment_parser
from gpo.judge_server import add_judge_serve_parser
from gpo.losses import LOSSES, resolve_loss
from gpo.objectives import OBJECTIVES
from gpo.sweep_cli import add_sweep_parsers


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def _losses_table(reports: list[LossReport]) -> str:
    header = ["name", "formula", "prior", "f'(0)", "f''(0)", "strength", "convex", "tail"]
    rows = [header]
    for r in reports:
        loss = resolve_loss(r.name)
        convex = (
            "yes"
            if r.convex
            else "no: " + ", ".join(f"[{_fmt(lo)}, {_fmt(hi)}]" for lo, hi in r.nonconvex_regions)
        )
        rows.append(
            [
                r.name,
                loss.formula,
                loss.prior_algorithm,
                _fmt(r.df0),
                _fmt(r.d2f0),
                _fmt(r.strength),
                convex,
                r.tail,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_losses(args: argparse.Namespace) -> int:
    names = [*LOSSES, *args.loss]
    reports = [analyze(name, allow_invalid=args.allow_invalid) for name in names]
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        print(_losses_table(reports))
        print("\nstrength = |f''(0)/f'(0)|: the IPO-equivalent regularizer is strength * beta.")
        print(
            "tail I: f' < 0 everywhere scanned; II: f' >= 0 beyond some v (stronger "
            "regularization at equal beta). Scan: v in [-10, 10]."
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from gpo.train import train

    cfg = load_config(args.config, overrides_from_args(args))
    summary = train(cfg)
    print(f"run folder: {summary['run_dir']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpo", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("losses", help="analyze the registered GPO losses (and any user loss)")
    p.add_argument(
        "--loss",
        action="append",
        default=[],
        metavar="PKG.MODULE:FUNC",
        help=f"also analyze this loss (repeatable); built-ins: {', '.join(LOSSES)}",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of LossReport objects")
    p.add_argument(
        "--allow-invalid",
        action="store_true",
        help="analyze losses with f'(0) >= 0 instead of refusing them",
    )
    p.set_defaults(func=cmd_losses)

    p = sub.add_parser(
        "train",
        help="preference-optimize a causal LM (defaults: embedded SmolLM2, "
        "LoRA, built-in gold data, logistic loss)",
    )
    p.add_argument("--config", metavar="YAML", help="config file; flags below override it")
    add_config_flags(
        p,
        {
            "loss": f"one of {', '.join(OBJECTIVES)}; 'fdpo:alpha=A' (etc.) or 'pkg.module:func'",
            "model": "HF hub name or local folder; 'smollm2' = embedded SmolLM2-135M-Instruct",
            "data": "jsonl/json/parquet/csv file, saved dataset folder, hub name, or 'gold'",
        },
    )
    p.set_defaults(func=cmd_train)
    add_experiment_parser(sub)
    add_data_parser(sub)
    add_sweep_parsers(sub)
    add_judge_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. `gpo losses | head`: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except Exception as e:
        if args.debug:
            raise
        kind = "" if isinstance(e, (ValueError, TypeError)) else f"{type(e).__name__}: "
        message = " ".join(str(e).split())  # one line
        print(f"gpo: error: {kind}{message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
