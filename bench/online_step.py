"""What an online step costs: `gpo train --online` against offline training at the same batch.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/online_step.py --json            # SmolLM2, 2 rounds
    HF_HUB_OFFLINE=1 .venv/bin/python bench/online_step.py --model tiny --rounds 1   # harness
    HF_HUB_OFFLINE=1 .venv/bin/python bench/online_step.py --mixture 0.5 --json  # + IPO-MD

The README's main job (SmolLM2-135M-Instruct + LoRA, logistic, the built-in gold task), batch 8,
``--steps`` optimizer steps; online: 2 completions per prompt, 48 new tokens, the gold judge
(issue 31's target: an online step at most 2.5x an offline one). Offline runs with
``--ref-cache none`` (override, named: pi_ref scores every step's pairs, as it must online;
with the default cache a warm cache would make offline steps cheaper still). No evaluations.
``--mixture A`` adds a third mode, online with IPO-MD sampling (``online_mixture A``: pi_ref's
logits at every decode step). Each run is a fresh process, the modes alternate (their order
reversed every other round), and the first step (warm-up) is dropped.

Reported per mode: the median step time (between two optimizer steps, from the trainer's step
callback), and for online the median split of a step: sampling, judging, pi_ref's scoring of
the pairs (``Reference.logps``, timed by a wrapper in this process) and the rest (the policy's
forward and backward, the optimizer). Time it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

#: Runs in a fresh process: one training run, its per-step times as one JSON line.
CHILD = r"""
import json, sys, time
from gpo.models.reference import Reference
from gpo.train.config import load_config
from gpo.train.trainer import Trainer

spent = {"ref": 0.0}
real = Reference.logps
def timed(self, *args, **kwargs):
    t = time.perf_counter()
    try:
        return real(self, *args, **kwargs)
    finally:
        spent["ref"] += time.perf_counter() - t
Reference.logps = timed

marks, refs = [], []
def on_step(step, elapsed):
    marks.append(time.perf_counter())
    refs.append(spent["ref"])

cfg = load_config(None, json.loads(sys.argv[1]))
trainer = Trainer(cfg, [on_step])
trainer.run()
steps = [b - a for a, b in zip(marks, marks[1:])]
ref = [b - a for a, b in zip(refs, refs[1:])]
online = []
for line in open(f"{cfg.out}/metrics.jsonl"):
    row = json.loads(line)
    if "online/seconds_sample" in row:
        online.append(row)
print("RESULT " + json.dumps({"steps": steps, "ref": ref, "online": online[1:]}))
"""


def one_run(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One run in a fresh process: ``offline``, ``online`` or ``mixture`` (online, IPO-MD)."""
    online = mode != "offline"
    out = os.path.join(tempfile.mkdtemp(prefix="gpo-online-bench-"), "run")
    values: dict[str, Any] = {
        "out": out,
        "max_steps": args.steps,
        "batch_size": 8,
        "max_new_tokens": 48,
        "eval_steps": 0,
        "gold_eval_prompts": 0,
        "save_steps": 0,
        "save_final": False,
        "report_to": ["none"],
        "progress": False,
        "ref_cache": "none",
        "online": online,
        "online_mixture": args.mixture if mode == "mixture" else 0.0,
    }
    if args.model != "smollm2":
        values["model"] = args.model
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(values)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"run failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    row: dict[str, Any] = {"mode": mode, "step_s": statistics.median(result["steps"])}
    row["ref_s"] = statistics.median(result["ref"])
    if online:
        for part in ("sample", "judge"):
            row[f"{part}_s"] = statistics.median(
                r[f"online/seconds_{part}"] for r in result["online"]
            )
        row["completion_tokens"] = statistics.median(
            r["online/completion_tokens"] for r in result["online"]
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 (the README's) or a path")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--mixture", type=float, default=0.0, help="also time online with IPO-MD at this A"
    )
    args = parser.parse_args()
    modes = ["offline", "online"] + (["mixture"] if args.mixture else [])
    rows = []
    for r in range(args.rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            rows.append(one_run(args, mode))
            if not args.json:
                print(rows[-1], flush=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in rows if x["mode"] == mode)

    off = median("offline", "step_s")
    result: dict[str, Any] = {"model": args.model, "steps": args.steps, "offline_step_s": off}
    result["offline_ref_s"] = median("offline", "ref_s")
    for mode in modes[1:]:
        result[f"{mode}_step_s"] = median(mode, "step_s")
        result[f"{mode}_split_s"] = {k: median(mode, f"{k}_s") for k in ("sample", "judge", "ref")}
        result[f"{mode}_completion_tokens"] = median(mode, "completion_tokens")
        result[f"{mode}_ratio"] = result[f"{mode}_step_s"] / off
    result["rows"] = rows
    ratios = ", ".join(f"{m} / offline: {result[f'{m}_ratio']:.2f}" for m in modes[1:])
    print(json.dumps(result, indent=2) if args.json else ratios)


if __name__ == "__main__":
    main()
