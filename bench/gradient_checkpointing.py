"""Gradient checkpointing (``gradient_checkpointing``, TRL's ``DPOConfig`` default): peak RSS and
step time with and without, on SmolLM2-135M-Instruct full fine-tuning, printed as JSON.

    .venv/bin/python bench/gradient_checkpointing.py                # SmolLM2, long prompts
    .venv/bin/python bench/gradient_checkpointing.py --steps 2      # a smoke check of the harness
    .venv/bin/python bench/gradient_checkpointing.py --model tiny --steps 2 --repeats 1

Each variant trains in its own process (``vs_trl.py``'s gpo child: its data, batch order,
fp32 full fine-tuning, constant learning rate, no pi_ref cache), alternating variants for
``--repeats`` rounds:

- ``off``: gpo's defaults (prefix sharing on);
- ``off, no prefix sharing``: ``share_prompt=False``, the same forward work as ``on``, which
  cannot share the prompt (checkpointed layers drop the KV cache that sharing runs on);
- ``on``: ``gradient_checkpointing=True``.

Per variant: the seconds per step over the ``--steps`` steps after ``--warmup`` (median over
repeats), pairs/s,
the largest peak RSS of its processes (``ru_maxrss``: the whole process, model and optimizer
included), and the largest per-step loss gap to ``off`` (float rounding only: checkpointing
recomputes the same activations).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import techniques  # one gpo child per variant
import vs_trl  # MODELS
import vs_trl_workload

VARIANTS: dict[str, dict[str, Any]] = {
    "off": {},
    "off, no prefix sharing": {"share_prompt": False},
    "on": {"gradient_checkpointing": True},
}


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    batch = args.batch_size or vs_trl_workload.DEFAULT_BATCH[args.shape]
    wl = vs_trl_workload.build_workload(
        args.shape, args.model, root, batch, args.warmup, args.steps
    )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):  # alternating, so drift on the host hits every variant alike
        for name, options in VARIANTS.items():
            runs[name].append(techniques.run_variant(wl, options, args, root, 1e-5, batch))
    base = runs["off"][0]["losses"]
    variants = {}
    for name, rs in runs.items():
        step_s = statistics.median(batch / r["pairs_per_s"] for r in rs)
        gaps = [abs(a - b) for r in rs for a, b in zip(r["losses"], base, strict=True)]
        variants[name] = {
            "step_s": step_s,
            "pairs_per_s": batch / step_s,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "max_loss_gap_to_off": max(gaps),
            "step_s_each_run": [batch / r["pairs_per_s"] for r in rs],
        }
    return {
        "model": args.model,
        "finetune": "full",
        "shape": args.shape,
        "batch_size": batch,
        "mean_lengths": wl.mean_lengths,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "variants": variants,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=vs_trl.MODELS, default="smollm2")
    parser.add_argument("--shape", choices=list(vs_trl_workload.SHAPES), default="long_prompt")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, help="default: 2, variable shape 8")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpo-gc-bench-") as tmp:
        result = measure(args, Path(tmp))
    result["wall_s"] = time.perf_counter() - t0
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
