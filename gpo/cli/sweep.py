"""``gpo sweep`` and ``gpo report``: argument parsing (the work: gpo/sweep.py, gpo/report.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gpo.experiments.presets import PRESETS


def cmd_sweep(args: argparse.Namespace) -> int:
    from gpo.experiments.sweep import load_sweep_config, run_sweep

    cfg = load_sweep_config(args.config, args.preset)
    kind = args.preset or (Path(args.config).stem if args.config else "sweep")
    out = args.out or f"runs/sweep-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    return run_sweep(
        cfg,
        out,
        jobs=args.jobs,
        print_commands=args.print_commands,
        executor=args.executor,
        ray_address=args.ray_address,
    )


def cmd_report(args: argparse.Namespace) -> int:
    from gpo.experiments.report import report

    report(args.sweep_dir, out=args.out, beta=args.beta, judge=args.judge, frontier=args.frontier)
    return 0


def add_sweep_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    presets = "; ".join(f"{name}: {p.help}" for name, p in PRESETS.items())
    p = sub.add_parser(
        "sweep",
        help="run a grid of `gpo train` runs (losses x betas x ...) in one resumable sweep folder",
        description="Run every combination of a sweep config's grid as a `gpo train` run. "
        "Finished runs are skipped; interrupted ones resume from their checkpoint.",
    )
    p.add_argument(
        "--config", metavar="YAML", help="sweep config (base, grid, sft, jobs, executor, ...)"
    )
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        help=f"a built-in sweep ({presets}); --config keys override it",
    )
    p.add_argument("--out", metavar="DIR", help="sweep folder (default runs/sweep-<name>-<time>)")
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="runs at once (default: the config's; with --executor ray: as many as the "
        "cluster fits)",
    )
    p.add_argument(
        "--print-commands",
        action="store_true",
        help="print one self-contained `gpo train` command per run instead of running them "
        "(with --executor slurm: the sbatch script of the job array)",
    )
    p.add_argument(
        "--executor",
        choices=["local", "ray", "slurm"],
        help="where the runs run: this machine (default), a Ray cluster, a Slurm job array "
        "(docs/distributed.md; also the config's `executor`)",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="the Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: $RAY_ADDRESS, "
        "else a local Ray instance on this machine)",
    )
    p.set_defaults(func=cmd_sweep)

    r = sub.add_parser(
        "report",
        help="figures, summary.json and report.md of a sweep folder (GPO paper Figs. 5-7, 9-12)",
    )
    r.add_argument("sweep_dir", metavar="SWEEP_DIR")
    r.add_argument("--out", metavar="DIR", help="output folder (default SWEEP_DIR/report)")
    r.add_argument(
        "--beta", type=float, help="beta of the side-by-side comparison (default: the best)"
    )
    r.add_argument("--judge", help="judge for the side-by-side (default: the runs' judge)")
    r.add_argument(
        "--frontier",
        metavar="SWEEP_DIR",
        action="append",
        default=[],
        help="a fixed-beta sweep (e.g. cpu-small) to compare KL-targeted runs with at equal KL",
    )
    r.set_defaults(func=cmd_report)
