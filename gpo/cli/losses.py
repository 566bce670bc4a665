"""``gpo losses``: the regularization analysis of every GPO loss, and every other objective that
``--loss`` accepts (the f-divergence families)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from gpo.losses.analysis import LossReport, analyze
from gpo.losses.divergences import DIVERGENCES
from gpo.losses.family import LOSSES, alias_note, resolve_loss
from gpo.losses.objectives import FAMILIES


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def losses_table(reports: list[LossReport]) -> str:
    rows = [["name", "formula", "prior", "f'(0)", "f''(0)", "strength", "convex", "tail"]]
    for r in reports:
        loss = resolve_loss(r.name)
        regions = ", ".join(f"[{_fmt(lo)}, {_fmt(hi)}]" for lo, hi in r.nonconvex_regions)
        convex = "yes" if r.convex else "no: " + regions
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
    return _table(rows)


def objectives_tables() -> str:
    """The f-divergence families and divergences: ``--loss FAMILY:DIVERGENCE``."""
    families = _table(
        [["family", "per-pair loss (f' of a probability ratio)", "source"]]
        + [[name, fam.formula, fam.source] for name, fam in FAMILIES.items()]
    )
    divergences = _table(
        [["divergence", "f(u)", "f'(u)"]]
        + [[name, d.generator, d.derivative] for name, d in DIVERGENCES.items()]
    )
    return (
        "f-divergence objectives (Sun et al. 2024): --loss FAMILY:DIVERGENCE, e.g. iupo:js; "
        "'alpha=A' sets the alpha coefficient (e.g. fdpo:alpha=0.3)\n\n"
        f"{families}\n\n{divergences}"
    )


def cmd_losses(args: argparse.Namespace) -> int:
    names = [*LOSSES, *args.loss]
    reports = [analyze(name, allow_invalid=args.allow_invalid) for name in names]
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
        return 0
    print(losses_table(reports))
    print(f"\nAlso accepted as --loss (the same loss at the same beta): {alias_note()}.")
    print("strength = |f''(0)/f'(0)|: the IPO-equivalent regularizer is strength * beta.")
    print(
        "tail I: f' < 0 everywhere scanned; II: f' >= 0 beyond some v (stronger "
        "regularization at equal beta). Scan: v in [-10, 10]."
    )
    print("\n" + objectives_tables())
    return 0


def add_losses_parser(sub: Any) -> None:
    p = sub.add_parser(
        "losses",
        help="analyze the GPO losses (and any user loss); list every objective --loss accepts",
    )
    p.add_argument(
        "--loss",
        action="append",
        default=[],
        metavar="PKG.MODULE:FUNC",
        help="also analyze this loss (repeatable; importing PKG.MODULE runs its code, as "
        f"running a script would: use only code you trust); built-ins: {', '.join(LOSSES)}",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of LossReport objects")
    p.add_argument(
        "--allow-invalid",
        action="store_true",
        help="analyze losses with f'(0) >= 0 instead of refusing them",
    )
    p.set_defaults(func=cmd_losses)
