"""``gpo experiment bandit|mog|taylor``: argument parsing into the experiment configs."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from gpo.experiments import bandit, mog, taylor
from gpo.losses import LOSSES

_BUILTINS = ", ".join(LOSSES)


def _default(config: type, name: str) -> Any:
    """A config field's default, so the CLI and the dataclass cannot drift apart."""
    f = {f.name: f for f in dataclasses.fields(config)}[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def cmd_bandit(args: argparse.Namespace) -> int:
    cfg = bandit.BanditConfig(
        losses=args.losses or list(LOSSES),
        betas=args.betas,
        steps=args.steps,
        seeds=args.seeds,
        seed=args.seed,
        lr=args.lr,
        batch_size=args.batch_size,
        dataset=args.dataset,
        max_points=args.points,
    )
    bandit.main(cfg, args.out, plot=not args.no_plot)
    return 0


def cmd_mog(args: argparse.Namespace) -> int:
    cfg = mog.MogConfig(seed=args.seed, search=args.search, samples=args.samples, grid=args.grid)
    mog.main(cfg, args.out, plot=not args.no_plot)
    return 0


def cmd_taylor(args: argparse.Namespace) -> int:
    cfg = taylor.TaylorConfig(
        losses=[*LOSSES, *args.loss],
        betas=args.betas,
        rho_min=args.rho_min,
        rho_max=args.rho_max,
        points=args.points,
    )
    taylor.main(cfg, args.out, plot=not args.no_plot)
    return 0


def _common(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--out", metavar="DIR", help=f"run folder (default: runs/{kind}-<timestamp>)")
    p.add_argument("--no-plot", action="store_true", help=f"skip {kind}.png")


def add_experiment_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``experiment`` and its sub-commands to the ``gpo`` parser's subparsers."""
    p = sub.add_parser("experiment", help="run the GPO paper's toy experiments")
    esub = p.add_subparsers(dest="experiment", required=True)

    b = esub.add_parser(
        "bandit",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="3-action bandit: pi(y_i) over training per loss and beta (paper Fig. 3)",
        description=bandit.__doc__.split("\n\n")[0] if bandit.__doc__ else None,
    )
    b.add_argument(
        "--losses",
        nargs="+",
        metavar="LOSS",
        help=f"losses to run: names or pkg.module:func (default: all of {_BUILTINS})",
    )
    b.add_argument("--betas", nargs="+", type=float, default=_default(bandit.BanditConfig, "betas"))
    b.add_argument("--steps", type=int, default=_default(bandit.BanditConfig, "steps"))
    b.add_argument(
        "--seeds", type=int, default=_default(bandit.BanditConfig, "seeds"), help="seeds per config"
    )
    b.add_argument(
        "--seed", type=int, default=_default(bandit.BanditConfig, "seed"), help="first seed"
    )
    b.add_argument(
        "--lr", type=float, default=_default(bandit.BanditConfig, "lr"), help="Adam learning rate"
    )
    b.add_argument("--batch-size", type=int, default=_default(bandit.BanditConfig, "batch_size"))
    b.add_argument(
        "--dataset",
        default=_default(bandit.BanditConfig, "dataset"),
        help=f"{' | '.join(bandit.DATASETS)} | pairs like '1>2,2>3,3>1' (winner>loser, 1-based)",
    )
    b.add_argument(
        "--points",
        type=int,
        default=_default(bandit.BanditConfig, "max_points"),
        help="trajectory points kept per config",
    )
    _common(b, "bandit")
    b.set_defaults(func=cmd_bandit)

    m = esub.add_parser(
        "mog",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="mixture-of-Gaussians counterexample: KL vs mu-weighted squared loss (Fig. 8)",
    )
    m.add_argument(
        "--seed",
        type=int,
        default=_default(mog.MogConfig, "seed"),
        help="draw of the u_i (first tried by --search)",
    )
    m.add_argument(
        "--search",
        type=int,
        default=_default(mog.MogConfig, "search"),
        metavar="K",
        help="try K draws (seed, seed+1, ...) and keep the first counterexample",
    )
    m.add_argument(
        "--samples",
        type=int,
        default=_default(mog.MogConfig, "samples"),
        help="Monte Carlo samples per estimate",
    )
    m.add_argument(
        "--grid",
        type=int,
        default=_default(mog.MogConfig, "grid"),
        help="number of shifts c in [-1, 1]",
    )
    _common(m, "mog")
    m.set_defaults(func=cmd_mog)

    t = esub.add_parser(
        "taylor",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="gradient of each smooth loss vs its IPO-equivalent square loss near rho = 0",
    )
    t.add_argument(
        "--loss",
        action="append",
        default=[],
        metavar="PKG.MODULE:FUNC",
        help=f"also check this loss (repeatable); built-ins always run: {_BUILTINS}",
    )
    t.add_argument("--betas", nargs="+", type=float, default=_default(taylor.TaylorConfig, "betas"))
    t.add_argument("--rho-min", type=float, default=_default(taylor.TaylorConfig, "rho_min"))
    t.add_argument("--rho-max", type=float, default=_default(taylor.TaylorConfig, "rho_max"))
    t.add_argument(
        "--points",
        type=int,
        default=_default(taylor.TaylorConfig, "points"),
        help="|rho| grid points (log-spaced)",
    )
    _common(t, "taylor")
    t.set_defaults(func=cmd_taylor)
