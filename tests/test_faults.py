"""Crash faults: ``kill -9`` of a training process at random moments and inside checkpoint writes,
then ``--resume``; damaged checkpoints are detected and an older one is used.

The killed processes run the real ``gpo train`` entry point (``gpo.cli.main``) in their own OS
process, forked from a forkserver that has imported torch/transformers once: a fresh interpreter
per run would spend ~5 s of every trial on imports and blow the time budget.
"""

import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from gpo.train.checkpoint import STATE, checkpoint_dirs
from gpo.train.faults import CHECKPOINT_POINTS
from gpo.train.tracking import read_metrics

SEED = 20240607  # the trial schedule is reproducible; it is printed on failure
STEPS, SAVE_EVERY = 12, 2
PRELOAD = [
    "gpo.cli",
    "gpo.train.trainer",
    "gpo.train.plots",
    "transformers.optimization",
    "transformers.models.llama.modeling_llama",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "accelerate",
]


def _child(argv: list[str], log: str, fault: str | None) -> None:
    """A ``gpo train`` process: output to ``log``, ``GPO_FAULT`` set if given."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if fault:
        os.environ["GPO_FAULT"] = fault
    torch.set_num_threads(1)  # the same in every run, so curves can be compared bitwise
    from gpo.cli import main

    code = main(argv)
    sys.stdout.flush()
    os._exit(code)


def _argv(model: Path, data: Path, out: Path, resume: bool = False) -> list[str]:
    return [
        "train",
        "--model", str(model),
        "--data", str(data),
        "--out", str(out),
        "--finetune", "full",
        "--batch-size", "4",
        "--learning-rate", "3e-3",
        "--lr-scheduler", "cosine",
        "--max-steps", str(STEPS),
        "--logging-steps", "1",
        "--eval-steps", "0",
        "--kl-prompts", "0",
        "--save-steps", str(SAVE_EVERY),
        "--save-total-limit", "2",
        "--save-final", "false",
        "--progress", "false",
        "--report-to", "none",
        "--ref-cache", "none",  # every run equally fast, so the kill times fall inside training
        *(["--resume"] if resume else []),
    ]  # fmt: skip


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if x.strip()]


def _newest_checkpoint_is_whole(run: Path) -> str:
    """The checkpoint --resume would pick loads completely (never a half-written one)."""
    dirs = checkpoint_dirs(run)
    if not dirs:
        return "none"
    newest = dirs[-1]
    from safetensors.torch import load_file

    assert load_file(newest / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.load(newest / name, weights_only=True)
    assert json.loads((newest / STATE).read_text())["step"] == int(newest.name.split("-")[1])
    return newest.name


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_same_curve(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path
) -> None:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)

    def start(out: Path, resume: bool = False, fault: str | None = None) -> Any:
        args = (_argv(tiny_model_dir, tiny_data_file, out, resume), str(out) + ".log", fault)
        proc = ctx.Process(target=_child, args=args)
        proc.start()
        return proc

    def kill_after(out: Path, seconds: float) -> Any:
        """A run SIGKILLed ``seconds`` after its config.json appears."""
        proc = start(out)
        while not (out / "config.json").exists() and proc.is_alive():
            time.sleep(0.005)
        time.sleep(seconds)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
        return proc

    def finish(proc: Any, what: str) -> None:
        proc.join(timeout=120)
        assert proc.exitcode == 0, f"{what} failed: {Path(proc._args[1]).read_text()[-2000:]}"

    # Uninterrupted runs: the curve to match, and how long training takes (for kill times).
    # The second run is timed: the first one in a fresh forkserver pays one-off warm-ups.
    curves, window = [], 0.0
    for name in ("ref", "ref2"):
        ref = tmp_path / name
        proc = start(ref)
        while not (ref / "config.json").exists() and proc.is_alive():
            time.sleep(0.01)
        t0 = time.monotonic()
        while not (ref / "summary.json").exists() and proc.is_alive():
            time.sleep(0.005)
        window = time.monotonic() - t0  # until training is over (plots etc. come after)
        finish(proc, "reference run")
        curves.append(_losses(ref))
    expected = curves[0]
    assert len(expected) == STEPS and curves[1] == expected

    rng = random.Random(SEED)
    points = [(s, p) for s in range(SAVE_EVERY, STEPS, SAVE_EVERY) for p in CHECKPOINT_POINTS]
    faults = rng.sample(points, 5)
    trials: list[tuple[str, Any]] = [("checkpoint", f) for f in faults]
    trials += [("timer", rng.uniform(0.0, 0.6 * window)) for _ in range(5)]  # margin for jitter
    rng.shuffle(trials)
    print(f"trial schedule (seed {SEED}, training window {window:.2f}s): {trials}")

    for i, (kind, at) in enumerate(trials):
        run = tmp_path / f"trial{i}"
        if kind == "checkpoint":
            step, point = at
            proc = start(run, fault=f"kill:{point}:{step}")
            proc.join(timeout=120)
        else:
            proc = kill_after(run, at)
            # One timed window can be twice a later run's (a CI run saw a run end inside
            # 0.19 s of a 0.40 s window): a run that finished first is tried again, sooner.
            while (run / "summary.json").exists() and at > 0.001:
                shutil.rmtree(run)
                at /= 2
                proc = kill_after(run, at)
        assert proc.exitcode == -signal.SIGKILL, f"trial {i} ({kind} {at}): not killed"
        assert not (run / "summary.json").exists()
        newest = _newest_checkpoint_is_whole(run)
        # Trial 0 is killed a second time, inside the resumed run's next checkpoint.
        again = f"kill:state:{STEPS - SAVE_EVERY}" if i == 0 else None
        if again:
            proc = start(run, resume=True, fault=again)
            proc.join(timeout=120)
            assert proc.exitcode == -signal.SIGKILL
        finish(start(run, resume=True), f"resume of trial {i}")
        log = Path(str(run) + ".log").read_text()
        print(f"trial {i}: {kind} {at} -> newest complete checkpoint {newest}")
        assert "resuming at step" in log or "no usable checkpoint: starting" in log
        assert _losses(run) == expected, f"trial {i} ({kind} {at}): curve differs"
        assert not list((run / "checkpoints").glob(".tmp-*")), "a temp folder was left behind"


def _rng_argv(model: Path, data: Path, out: Path, resume: bool = False) -> list[str]:
    """A short LoRA run that draws random numbers: dropout in every training step, and a
    sampling KL evaluation every 2 steps; checkpoints every 2 steps and a final adapter."""
    return [
        "train",
        "--model", str(model),
        "--data", str(data),
        "--out", str(out),
        "--finetune", "lora",
        "--lora-dropout", "0.2",
        "--batch-size", "4",
        "--learning-rate", "3e-3",
        "--max-steps", "6",
        "--logging-steps", "1",
        "--eval-steps", "2",
        "--eval-fraction", "0.2",
        "--kl-prompts", "2",
        "--kl-samples", "2",
        "--max-new-tokens", "4",
        "--save-steps", "2",
        "--save-final", "true",
        "--progress", "false",
        "--report-to", "none",
        "--ref-cache", "none",
        *(["--resume"] if resume else []),
    ]  # fmt: skip


@pytest.mark.slow
def test_kill_9_with_lora_dropout_and_sampling_evals_then_resume_is_exact(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path
) -> None:
    """A real SIGKILL, from outside, once the step-2 checkpoint is on disk; ``--resume`` in a
    new process must restore the RNG that LoRA dropout draws from, or the resumed steps (and
    the final adapter) differ from an uninterrupted run's."""
    from safetensors.torch import load_file

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([*PRELOAD, "peft"])

    def run_gpo(out: Path, resume: bool = False) -> Any:
        args = (_rng_argv(tiny_model_dir, tiny_data_file, out, resume), str(out) + ".log", None)
        proc = ctx.Process(target=_child, args=args)
        proc.start()
        return proc

    def finish(proc: Any, out: Path) -> str:
        proc.join(timeout=300)
        log = Path(str(out) + ".log").read_text()
        assert proc.exitcode == 0, log[-2000:]
        return log

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    finish(run_gpo(whole), whole)
    proc = run_gpo(cut)
    first = cut / "checkpoints" / "step-000002" / STATE
    deadline = time.monotonic() + 300
    while not first.exists():
        assert proc.is_alive() and time.monotonic() < deadline, "no checkpoint before the end"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL, "the run ended before it was killed"
    assert not (cut / "final").exists() and not (cut / "summary.json").exists()
    log = finish(run_gpo(cut, resume=True), cut)
    assert "resuming at step 2" in log or "resuming at step 4" in log
    expected = read_metrics(whole)
    assert any("eval/kl" in r for r in expected) and any("loss" in r for r in expected)
    assert read_metrics(cut) == expected  # bitwise: train losses, eval metrics, KL
    a = load_file(whole / "final" / "adapter_model.safetensors")
    b = load_file(cut / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gpo.cli import main

    argv = _argv(tiny_model_dir, tiny_data_file, tmp_path)
    argv[argv.index("--max-steps") + 1] = "6"
    assert main(argv) == 0
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000002", "step-000004"]
    weights = tmp_path / "checkpoints" / "step-000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as a failing disk might leave
    (tmp_path / "summary.json").unlink()  # as if killed before the end (a finished run is kept)
    expected = _losses(tmp_path)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint" in out and "step-000004 is damaged" in out and "trying an older one" in out
    assert "resuming at step 2" in out
    assert _losses(tmp_path) == expected


def test_folder_without_state_json_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for name in ("step-000002", "step-000004", ".tmp-step-000006"):
        (root / name).mkdir(parents=True)
    (root / "step-000002" / STATE).write_text("{}")
    (root / ".tmp-step-000006" / STATE).write_text("{}")
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000002"]
