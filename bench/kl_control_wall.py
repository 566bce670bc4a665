"""What `--kl-target` costs in time: a controlled run against the same run at a fixed beta.

    .venv/bin/python bench/kl_control_wall.py --json                  # README main job, 3 pairs
    .venv/bin/python bench/kl_control_wall.py --model tiny --rounds 1  # harness check

Each round runs the README's main job (SmolLM2-135M-Instruct + LoRA, logistic, beta 0.1, 30
steps, its evaluations and final gold win rate) twice, each a fresh `gpo train` process,
alternating which goes first: at the fixed beta, and with `--kl-target` (its measurements
sample the policy while it trains). It reports both processes' wall time and the training
loop's (`summary.json`'s `train_seconds`, which contains the controller's measurements), and
the median of the per-pair ratios. Time it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def one_run(args: argparse.Namespace, controlled: bool) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="gpo-klwall-")) / "run"
    cmd = [sys.executable, "-m", "gpo.cli", "train", "--out", str(out), "--progress", "false"]
    cmd += ["--report-to", "none", "--save-final", "false"]
    if args.model != "smollm2":
        cmd += ["--model", args.model, "--max-steps", str(args.steps)]
    if controlled:
        cmd += ["--kl-target", str(args.kl_target)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    return {
        "controlled": controlled,
        "wall_seconds": round(wall, 2),
        "train_seconds": round(summary["train_seconds"], 2),
        "final_kl": summary.get("kl"),
        "kl_target_met": summary.get("kl_target_met"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 (the README's) or a path")
    parser.add_argument("--steps", type=int, default=30, help="with --model PATH only")
    parser.add_argument("--kl-target", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    runs = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        pair = {c: one_run(args, c) for c in order}
        runs += [pair[False], pair[True]]
        if not args.json:
            print(f"round {r + 1}: fixed {pair[False]}, controlled {pair[True]}", flush=True)
    ratio = {
        key: statistics.median(c[key] / f[key] for f, c in zip(runs[0::2], runs[1::2], strict=True))
        for key in ("wall_seconds", "train_seconds")
    }
    result = {"model": args.model, "kl_target": args.kl_target, "runs": runs, "median_ratio": ratio}
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
