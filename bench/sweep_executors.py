"""`gpo sweep` on Ray vs the local executor: the same 4-run tiny sweep, the same runs at once.

    .venv/bin/python bench/sweep_executors.py --quick          # harness check (~1.5 min, 2 cores)
    .venv/bin/python bench/sweep_executors.py --json           # 3 rounds, 6 and 300 steps

The sweep is the one of ``tests/test_sweep_executors.py`` (a tiny random Llama, 48 tiny pairs,
2 losses x 2 betas, evaluations with KL and the gold win rate at steps 2, 4 and the last), with
``--steps`` training steps per run. ``local`` runs it with ``--jobs 2``; ``ray`` with a local
Ray instance and ``cpus_per_run`` = cores / 2, so both run two at once on this machine. Each
sweep is a fresh ``gpo sweep`` process with a fresh sweep folder and reference cache (nothing
pre-computed), and the two alternate for ``--repeats`` rounds.

Reported per executor: the wall time of the whole ``gpo sweep`` command (median over rounds),
and for Ray, as the sweep prints them: its start-up (``ray.init``: starting the instance), the
probe task that checks the sweep folder (the first worker process starts there) and the
pre-build of pi_ref's log-probs and opponents. The ratio is Ray's wall time without its
start-up (``ray.init`` only) over local's wall time (issue 29's target: at most 1.15). Since
Ray skips the probe and the pre-build on its own one-node instance, those read 0 there; the
time ``ray.shutdown`` takes at the end is reported too (``ray_shutdown_s``, JSON only), and stays
in Ray's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

GRID = {"loss": ["logistic", "hinge"], "beta": [0.1, 1.0]}


def make_model_and_data(root: Path) -> tuple[Path, Path]:
    """The tests' tiny model and data: chosen starts with 'good', rejected with 'bad'."""
    from gpo.models.tiny import DEFAULT_WORDS, tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer(seed=0)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rng = random.Random(0)
    words = [w for w in DEFAULT_WORDS if w.isalpha() and w not in ("good", "bad")]
    with open(root / "prefs.jsonl", "w") as f:
        for _ in range(48):
            prompt = " ".join(rng.choices(words, k=rng.randint(2, 6)))
            chosen = "good " + " ".join(rng.choices(words, k=rng.randint(1, 4)))
            rejected = "bad " + " ".join(rng.choices(words, k=rng.randint(1, 4)))
            row = {"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected}
            f.write(json.dumps(row) + "\n")
    return root / "model", root / "prefs.jsonl"


def sweep_config(model: Path, data: Path, steps: int, executor: str) -> dict[str, Any]:
    base = {
        "model": str(model),
        "data": str(data),
        "eval_fraction": 0.1,
        "finetune": "full",
        "batch_size": 4,
        "learning_rate": 3e-3,
        "lr_scheduler": "constant",
        "warmup_ratio": 0.0,
        "max_steps": steps,
        "logging_steps": 1,
        "eval_schedule": f"2:4,{max(3, steps // 2)}",
        "save_steps": 2 if steps <= 10 else steps // 4,
        "kl_prompts": 3,
        "kl_samples": 2,
        "max_new_tokens": 6,
        "judge_prompts": 4,
        "gold_eval_prompts": 0,
        "save_final": True,
        "report_to": ["none"],
        "progress": False,
    }
    cfg: dict[str, Any] = {"base": base, "grid": GRID}
    if executor == "local":
        cfg["jobs"] = 2
    else:
        cfg.update(executor="ray", cpus_per_run=max(1, (os.cpu_count() or 2) // 2))
    return cfg


def one_sweep(root: Path, model: Path, data: Path, steps: int, executor: str, k: int) -> dict:
    name = f"{executor}-{steps}-{k}"
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump(sweep_config(model, data, steps, executor), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_HUB_OFFLINE="1", GPO_CACHE_DIR=str(root / f"cache-{name}"))
    cmd = [sys.executable, "-m", "gpo.cli", "sweep", "--config", str(config)]
    cmd += ["--out", str(root / name)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = {"executor": executor, "steps": steps, "wall_s": wall}
    if m := re.search(r"ray: started a local instance in ([\d.]+) s", proc.stdout):
        out["ray_startup_s"] = float(m.group(1))
    if m := re.search(r"a worker checked the sweep folder in ([\d.]+) s", proc.stdout):
        out["probe_s"] = float(m.group(1))
    if m := re.search(r"pre-built for \d+ group\(s\) in ([\d.]+) s", proc.stdout):
        out["prebuild_s"] = float(m.group(1))
    if m := re.search(r"ray: stopped the local instance in ([\d.]+) s", proc.stdout):
        out["ray_shutdown_s"] = float(m.group(1))  # reported, not subtracted
    return out


def summarize(rows: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    local = [r["wall_s"] for r in rows if r["executor"] == "local" and r["steps"] == steps]
    ray = [r for r in rows if r["executor"] == "ray" and r["steps"] == steps]
    med = statistics.median
    result = {
        "steps": steps,
        "rounds": len(local),
        "local_wall_s": med(local),
        "ray_wall_s": med(r["wall_s"] for r in ray),
        "ray_startup_s": med(r.get("ray_startup_s", 0.0) for r in ray),
        "ray_probe_s": med(r.get("probe_s", 0.0) for r in ray),
        "ray_prebuild_s": med(r.get("prebuild_s", 0.0) for r in ray),
        "ray_shutdown_s": med(r.get("ray_shutdown_s", 0.0) for r in ray),
        "ray_wall_without_startup_s": med(r["wall_s"] - r.get("ray_startup_s", 0.0) for r in ray),
    }
    result["ratio"] = result["ray_wall_without_startup_s"] / result["local_wall_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[6, 300])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round of 6 steps")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = [6], 1
    root = Path(tempfile.mkdtemp(prefix="gpo-bench-sweep-"))
    model, data = make_model_and_data(root)
    rows = []
    for steps in args.steps:
        for k in range(args.repeats):
            for executor in ("local", "ray"):  # alternating: drift in load hits both
                rows.append(one_sweep(root, model, data, steps, executor, k))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    results = [summarize(rows, steps) for steps in args.steps]
    if args.json:
        print(json.dumps({"cores": os.cpu_count(), "results": results, "rows": rows}, indent=2))
        return
    print("| steps/run | local wall | Ray wall | Ray start-up | folder probe | pre-build | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['steps']} | {r['local_wall_s']:.1f} s | {r['ray_wall_s']:.1f} s | "
            f"{r['ray_startup_s']:.1f} s | {r['ray_probe_s']:.1f} s | "
            f"{r['ray_prebuild_s']:.1f} s | {r['ratio']:.2f} |"
        )


if __name__ == "__main__":
    main()
