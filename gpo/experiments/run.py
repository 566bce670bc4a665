"""The shared body of every experiment: print the config, compute, save, plot, summarize."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpo.io import new_run_dir, print_config, write_json


def run_experiment(
    name: str,
    cfg: Any,
    compute: Callable[[Any], dict[str, Any]],
    plot: Callable[[dict[str, Any], Path], Any] | None,
    summarize: Callable[[dict[str, Any]], str],
    out: str | Path | None = None,
) -> Path:
    """Print ``cfg``, run ``compute(cfg)``, write ``results.json`` and ``<name>.png`` to the run
    folder (``out`` or ``runs/<name>-<time>``), print the summary; return the folder."""
    print_config(cfg)
    results = compute(cfg)
    run_dir = new_run_dir(out, name)
    write_json(run_dir / "results.json", results)
    if plot is not None:
        plot(results, run_dir / f"{name}.png")
    print(summarize(results))
    print(f"computed in {results['seconds']:.2f}s; wrote {run_dir}/")
    return run_dir
