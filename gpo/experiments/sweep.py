"""`gpo sweep`: a grid of `gpo train` runs in one sweep folder, resumable and parallel.

A sweep config (YAML, or a preset of :mod:`gpo.experiments.presets`) has::

    base:  {TrainConfig key: value, ...}       # shared by every run
    grid:  {TrainConfig key: [values], ...}    # one run per combination, in key order
    runs:  [{name: N, TrainConfig key: value, ...}, ...]  # optional: settings that are no grid,
                                               # each run once per grid combination
    sft:   {SftConfig key: value, ...} | null  # optional: build a tiny pi_sft first (gpo/sft.py)
    jobs: 1                                    # runs at once (--jobs overrides)
    executor: local                            # local | ray | slurm (docs/distributed.md)

The sweep folder holds ``sweep.json`` (the resolved config), ``commands.sh``, ``pi_sft/`` when
built, and ``runs/<name>/``, one `gpo train` run folder per combination. A run with a
``summary.json`` is finished and skipped; a run with a ``config.json`` only was interrupted and
is restarted with ``--resume`` (from its newest checkpoint). Each run is a subprocess with its
output in ``runs/<name>/train.log``. Ctrl-C or SIGTERM stops the running runs too (a run left
running would race the resumed sweep for the same folder and cores). Options that hold
credentials (a judge URL's ``user:key@``) reach each run in its environment, never its argv.

The ``ray`` and ``slurm`` executors (:mod:`gpo.experiments.executors`) run the same command
per run on a cluster, after pre-building pi_ref's log-probs and opponents once (when the runs
can land on several machines, or the config's ``prebuild`` asks for it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpo.experiments.executors.common import (
    SWEEP_JSON,
    SweepInterrupted,
    check_writable,
    on_signals,
    run_tasks,
    stop,
)
from gpo.experiments.executors.prebuild import prebuild_tasks
from gpo.experiments.executors.progress import describe, tail
from gpo.experiments.executors.secrets import (
    SECRET_OPTIONS_ENV,
    masked_config,
    masked_runs,
    secret_options,
)
from gpo.experiments.sweep_config import (  # re-exported: the sweep's public names
    EXECUTORS,
    RUNS_DIR,
    SFT_DIR,
    Run,
    SweepConfig,
    load_sweep_config,
    merge,
    plan,
)
from gpo.io import print_config, redact_urls, redacted, write_json
from gpo.train.config import TrainConfig


def _flag_values(value: Any) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if value is None:
        return ["none"]
    if isinstance(value, list):
        return [str(v) for v in value]
    return [repr(value) if isinstance(value, float) else str(value)]


#: Flags a printed command always spells out, so that it names what it trains even if a
#: later gpo version changes a default.
ALWAYS = {"model", "data", "loss", "beta", "seed", "out"}


def train_args(tc: TrainConfig) -> list[str]:
    """`gpo train` flags that reproduce ``tc`` exactly (:data:`ALWAYS` and non-defaults)."""
    default = TrainConfig()
    args = []
    for f in dataclasses.fields(TrainConfig):
        value = getattr(tc, f.name)
        if value != getattr(default, f.name) or f.name in ALWAYS:
            args += ["--" + f.name.replace("_", "-"), *_flag_values(value)]
    return args


def command(run: Run, prefix: list[str] | None = None, resume: bool | None = None) -> list[str]:
    """The `gpo train` command of ``run`` (``--resume``, by default if it was started before)."""
    cmd = [*(prefix or ["gpo"]), "train", *train_args(run.config)]
    resume = run.started and not run.done if resume is None else resume
    return [*cmd, "--resume"] if resume else cmd


def child_command(run: Run, prefix: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command that trains ``run`` and the environment variables it needs on top of the
    sweep's: options with credentials are masked in argv and travel in the environment
    (:mod:`gpo.experiments.executors.secrets`)."""
    secret = secret_options(run.config)
    if not secret:
        return command(run, prefix), {}
    cmd = command(dataclasses.replace(run, config=masked_config(run.config, secret)), prefix)
    return cmd, {SECRET_OPTIONS_ENV: json.dumps(secret)}


def _threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def execute(runs: list[Run], jobs: int) -> list[Run]:
    """Run the unfinished runs, ``jobs`` at a time; print progress; return the failed ones.

    On SIGTERM (or Ctrl-C) the running runs are stopped before :class:`SweepInterrupted` is raised.
    """
    restore = on_signals()
    running: list[tuple[Run, subprocess.Popen[bytes], float, Any]] = []
    try:
        return _execute(runs, jobs, running)
    except (KeyboardInterrupt, SweepInterrupted) as e:
        stop([proc for _, proc, _, _ in running])
        for *_, log in running:
            log.close()
        code = e.exit_code if isinstance(e, SweepInterrupted) else 130
        stopped = ", ".join(r.name for r, *_ in running) or "no run"
        raise SweepInterrupted(stopped, code) from None
    finally:
        restore()


def _execute(
    runs: list[Run], jobs: int, running: list[tuple[Run, subprocess.Popen[bytes], float, Any]]
) -> list[Run]:
    todo = [r for r in runs if not r.done]
    n = len(runs)
    index = {r.name: k + 1 for k, r in enumerate(runs)}
    for r in runs:
        if r.done:
            print(f"[{index[r.name]}/{n}] {r.name}: finished before, skipped", flush=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(_threads(jobs)))  # jobs share the cores
    prefix = [sys.executable, "-m", "gpo.cli"]
    failed: list[Run] = []
    while todo or running:
        while todo and len(running) < jobs:
            run = todo.pop(0)
            cmd, extra = child_command(run, prefix)
            run.dir.mkdir(parents=True, exist_ok=True)
            log = open(run.dir / "train.log", "ab")  # noqa: SIM115 - closed when the run ends
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**env, **extra})
            how = "resuming" if "--resume" in cmd else "started"
            print(f"[{index[run.name]}/{n}] {run.name}: {how}", flush=True)
            running.append((run, proc, time.perf_counter(), log))
        time.sleep(0.2)
        for item in list(running):
            run, proc, t0, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            k = index[run.name]
            if proc.returncode == 0 and run.done:
                done = describe(run.dir, time.perf_counter() - t0)
                print(f"[{k}/{n}] {run.name}: {done}", flush=True)
            else:
                failed.append(run)
                print(
                    f"[{k}/{n}] {run.name}: FAILED (exit {proc.returncode}): "
                    f"{tail(run.dir / 'train.log')} (log: {run.dir / 'train.log'})",
                    flush=True,
                )
    return failed


def task_args(run: Run) -> list[str]:
    """A cluster task's command after Python (``run`` masked; the worker adds ``--resume``)."""
    return command(run, ["-m", "gpo.cli"], resume=False)


def _backend(executor: str, cfg: SweepConfig, ray_address: str | None) -> Any:
    """The cluster executor (its optional dependency checked now: one line without it)."""
    if ray_address is not None and executor != "ray":
        raise ValueError("--ray-address needs --executor ray")
    if executor == "ray":
        from gpo.experiments.executors.ray_sweep import RayExecutor

        return RayExecutor(cfg, ray_address or os.environ.get("RAY_ADDRESS") or None)
    if executor == "slurm":
        from gpo.experiments.executors.slurm_sweep import SlurmExecutor

        return SlurmExecutor(cfg)
    if executor != "local":
        raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    return None


def run_sweep(
    cfg: SweepConfig,
    sweep_dir: str | Path,
    jobs: int | None = None,
    print_commands: bool = False,
    executor: str | None = None,
    ray_address: str | None = None,
) -> int:
    """Set up and run (or, with ``print_commands``, only print) the sweep; the exit status."""
    sweep_dir = Path(sweep_dir).resolve()  # absolute: printed commands run from anywhere
    runs = plan(cfg, sweep_dir)
    executor = executor or cfg.executor
    backend = _backend(executor, cfg, ray_address)
    check_writable(sweep_dir)
    try:
        return _run(cfg, sweep_dir, runs, jobs, print_commands, executor, backend)
    finally:
        if backend is not None:
            backend.close()


def _run(
    cfg: SweepConfig,
    sweep_dir: Path,
    runs: list[Run],
    jobs: int | None,
    print_commands: bool,
    executor: str,
    backend: Any,
) -> int:
    masked, env = masked_runs(runs)
    if backend is not None and not print_commands:
        backend.connect(sweep_dir, env)  # bad setups fail here, before anything is built
    if cfg.sft is not None:  # the runs start from it, so it is built even for --print-commands
        from gpo.experiments.sft import train_tiny_sft

        train_tiny_sft(cfg.sft, sweep_dir / SFT_DIR, progress=not print_commands)
    # Credentials in a URL (a judge's base_url) are masked in what is written and printed.
    lines = [redact_urls(shlex.join(command(r))) for r in runs]
    (sweep_dir / "commands.sh").write_text("".join(line + "\n" for line in lines))
    if print_commands:
        slurm = executor == "slurm"
        print(backend.script(sweep_dir, len(runs)) if slurm else "\n".join(lines))
        return 0
    # The config's `jobs` is this machine's (presets set it for 2 cores); on a cluster the
    # resources per run decide, and only --jobs caps them.
    jobs = (jobs or cfg.jobs or 1) if backend is None else jobs
    resolved = redacted(
        {"sweep": cfg, "sweep_dir": str(sweep_dir), "jobs": jobs, "runs": len(runs)}
    )
    print_config(resolved, "resolved sweep config")
    write_json(sweep_dir / SWEEP_JSON, resolved)  # also what workers look for
    t0 = time.perf_counter()
    before = sum(1 for r in runs if r.done)  # finished by earlier invocations of this sweep
    try:
        if backend is None:
            failed = execute(runs, jobs)
        else:
            if any(not r.done for r in runs) and backend.wants_prebuild():
                configs = [r.config for r in masked]
                backend.prebuild(prebuild_tasks(configs, sweep_dir, cfg.cpus_per_run))
            elif any(not r.done for r in runs):
                print("sweep: no pre-build (one node: the runs share its cache)", flush=True)
            failed = backend.execute(
                masked, run_tasks(masked, sweep_dir, cfg.cpus_per_run, task_args), jobs
            )
    except SweepInterrupted as e:
        print(
            f"sweep: interrupted; stopped {e}. Resume with the same command "
            f"(--out {shlex.quote(str(sweep_dir))}); interrupted runs continue from their last "
            "checkpoint.",
            flush=True,
        )
        return e.exit_code
    report = shlex.join(["gpo", "report", str(sweep_dir)])
    print(
        f"sweep: {len(runs) - len(failed)}/{len(runs)} runs finished ({before} before this "
        f"invocation, {len(runs) - len(failed) - before} in it); this invocation took "
        f"{time.perf_counter() - t0:.0f} s; report with: {report}",
        flush=True,
    )
    return 1 if failed else 0


__all__ = [
    "EXECUTORS",
    "RUNS_DIR",
    "SFT_DIR",
    "Run",
    "SweepConfig",
    "load_sweep_config",
    "merge",
    "plan",
    "run_sweep",
    "train_args",
]
