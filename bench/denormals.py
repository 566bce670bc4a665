"""What flushing denormals (``TrainConfig.flush_denormals``, on by default) saves on CPU.

    .venv/bin/python bench/denormals.py --json                      # SmolLM2 LoRA, the gold task
    .venv/bin/python bench/denormals.py --model tiny --steps 3      # harness check

A loss term that saturates hands the backward pass gradients below float32's smallest normal
number (1.2e-38): JS-IUPO's slope ``sigmoid(-log u)`` once a pair is separated by more than
~87 nats of summed log-probs, DPO's ``sigmoid(-beta rho)`` at large ``beta rho``. x86 CPUs handle
such denormal operands in microcode, ~100x slower, in every matmul they reach. Per loss, this runs
the same training twice, each in a fresh process (the setting is process-wide), alternating:
flush on, flush off. It reports the training loop's seconds (``summary.json``'s
``train_seconds``: no model load, no final evaluation), their ratio, and the largest per-step
difference of the logged losses (flushing changes only values below 1.2e-38).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vs_trl_children  # the benchmarked-run options
import vs_trl_workload  # the tiny model for --model tiny

#: (loss, beta): JS-IUPO (cpu-smol-upo's slow runs), DPO and Savage at beta 10, square as control.
CASES = (("iupo:js", 0.2), ("logistic", 10.0), ("savage", 10.0), ("square", 0.1))


def run_child(args: argparse.Namespace) -> None:
    from gpo.train.config import TrainConfig
    from gpo.train.tracking import read_metrics
    from gpo.train.trainer import train

    out = tempfile.mkdtemp(prefix="gpo-denormals-")
    cfg = TrainConfig(
        model=args.model,
        data="gold",
        loss=args.loss,
        beta=args.beta,
        max_steps=args.steps,
        **vs_trl_children.train_only(),
        seed=args.seed,
        out=out,
        flush_denormals=args.flush == "on",
    )
    summary = train(cfg)
    losses = [m["loss"] for m in read_metrics(Path(out)) if "loss" in m]
    print(json.dumps({"train_seconds": summary["train_seconds"], "losses": losses}))


def child(args: argparse.Namespace, loss: str, beta: float, flush: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--steps", str(args.steps)]
    cmd += ["--seed", str(args.seed), "--loss", loss, "--beta", str(beta), "--flush", flush]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"child failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="smollm2, tiny, or a model folder")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per run (batch 8)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loss", help=argparse.SUPPRESS)
    p.add_argument("--beta", type=float, help=argparse.SUPPRESS)
    p.add_argument("--flush", choices=("on", "off"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return run_child(args)
    model = args.model
    if args.model == "tiny":  # a random 2-layer model (vs_trl.py's), for a quick harness check
        args.model = vs_trl_workload.model_dir(
            "tiny", Path(tempfile.mkdtemp(prefix="gpo-denormals-"))
        )
    results: dict[str, Any] = {}
    for loss, beta in CASES:
        on, off = child(args, loss, beta, "on"), child(args, loss, beta, "off")
        dev = max(abs(a - b) for a, b in zip(on["losses"], off["losses"], strict=True))
        key = f"{loss}@{beta:g}"
        results[key] = {
            "seconds_flush": round(on["train_seconds"], 2),
            "seconds_no_flush": round(off["train_seconds"], 2),
            "speedup": round(off["train_seconds"] / on["train_seconds"], 2),
            "loss_max_abs_dev": dev,
        }
        r = results[key]
        print(
            f"{key:>14}: {r['seconds_flush']:7.1f} s flushed, {r['seconds_no_flush']:7.1f} s not"
            f" ({r['speedup']:.2f}x); per-step loss max |diff| {dev:.2e}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps({"model": model, "steps": args.steps, "results": results}))


if __name__ == "__main__":
    main()
