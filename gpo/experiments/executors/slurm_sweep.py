"""``gpo sweep --executor slurm``: the runs as one Slurm job array, submitted through submitit.

Each array task runs its run's `gpo train` command (:func:`common.run_task`) with
``cpus_per_run`` CPUs, ``gpus_per_run`` GPUs, ``slurm_time`` minutes, in ``slurm_partition``;
``slurm_array_parallelism`` of them at once. Near the time limit, or when the job is preempted,
Slurm sends USR2 (``--signal``): the run is stopped (it writes a checkpoint) and the job is
requeued, and the requeued job resumes from that checkpoint. ``slurm_cluster: local`` runs the
same jobs through submitit's local executor (processes on this machine), as the tests do.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from gpo.experiments.executors.common import (
    RUNNING,
    STOP_GRACE_S,
    Outcome,
    SweepInterrupted,
    Task,
    on_signals,
    require,
    run_task,
    stop,
    wait_unlocked,
)
from gpo.experiments.executors.progress import begin, ended, prebuilt, seen_running

SLURM_DIR = "slurm"


class SlurmRun:
    """The function each array task runs; submitit calls :meth:`checkpoint` on USR2."""

    def __call__(self, task: Task) -> Outcome:
        return run_task(task)

    def checkpoint(self, task: Task) -> Any:
        """Stop the run (SIGTERM: it checkpoints) and ask submitit to requeue this job."""
        import submitit

        stop(list(RUNNING))
        return submitit.helpers.DelayedSubmission(self, task)


class SlurmExecutor:
    def __init__(self, cfg: Any) -> None:
        self.submitit = require("submitit", "slurm")
        self.cfg = cfg
        if cfg.gpus_per_run != int(cfg.gpus_per_run):
            raise ValueError(f"gpus_per_run {cfg.gpus_per_run:g}: Slurm gives whole GPUs")
        self.session = uuid.uuid4().hex[:12]

    def parameters(self) -> dict[str, Any]:
        """submitit's AutoExecutor parameters (the local executor ignores the ``slurm_`` ones)."""
        cfg = self.cfg
        params: dict[str, Any] = {
            "name": "gpo-sweep",
            "timeout_min": cfg.slurm_time,
            "cpus_per_task": cfg.cpus_per_run,
            "gpus_per_node": int(cfg.gpus_per_run),
            "slurm_array_parallelism": cfg.slurm_array_parallelism,
            # USR2 this long before the time limit: time for `gpo train` to checkpoint.
            "slurm_signal_delay_s": int(STOP_GRACE_S + 30),
            "slurm_additional_parameters": dict(cfg.slurm_extra),
        }
        if cfg.slurm_partition:
            params["slurm_partition"] = cfg.slurm_partition
        if cfg.slurm_mem_gb:
            params["mem_gb"] = cfg.slurm_mem_gb
        return params

    def script(self, sweep_dir: Path, n_runs: int) -> str:
        """The sbatch script of the array of ``n_runs`` runs, as submitit writes it."""
        from submitit.slurm.slurm import _make_sbatch_string

        p = self.parameters()
        folder = sweep_dir / SLURM_DIR / "%j"
        optional = {"partition": p.get("slurm_partition"), "mem": _mem(p.get("mem_gb"))}
        return _make_sbatch_string(
            command=f"{sys.executable} -u -m submitit.core._submit {folder}",
            folder=folder,
            job_name=p["name"],
            time=p["timeout_min"],
            cpus_per_task=p["cpus_per_task"],
            gpus_per_node=p["gpus_per_node"] or None,
            array_parallelism=p["slurm_array_parallelism"],
            signal_delay_s=p["slurm_signal_delay_s"],
            additional_parameters=p["slurm_additional_parameters"] or None,
            map_count=n_runs,
            **{k: v for k, v in optional.items() if v},
        )

    def connect(self, sweep_dir: Path, env: dict[str, str]) -> None:
        """Fail before anything is submitted when there is no Slurm here."""
        if self.cfg.slurm_cluster == "slurm" and not shutil.which("sbatch"):
            raise ValueError(
                "--executor slurm: sbatch is not on PATH (run gpo sweep on a Slurm login "
                "node; slurm_cluster: local runs the jobs on this machine)"
            )
        folder = sweep_dir / SLURM_DIR / "%j"
        self.executor = self.submitit.AutoExecutor(folder=folder, cluster=self.cfg.slurm_cluster)
        self.executor.update_parameters(**self.parameters())
        # sbatch (and the local executor) pass this environment on to the jobs: credentials
        # travel here, not in the pickled jobs in the sweep folder.
        os.environ.update(env)

    def close(self) -> None:
        pass

    def wants_prebuild(self) -> bool:
        """The sweep's ``prebuild``, by default on (the array's jobs land on several nodes)."""
        return self.cfg.prebuild is not False

    def prebuild(self, tasks: list[Task]) -> None:
        """The pre-build tasks as one array, before the runs' array."""
        if tasks:
            t0 = time.perf_counter()
            jobs = self.executor.map_array(SlurmRun(), tasks)
            prebuilt(tasks, [job.result for job in jobs], t0)

    def execute(self, runs: list[Any], tasks: list[Task], jobs: int | None) -> list[Any]:
        """Submit the unfinished runs as one array; print progress; return the failed ones."""
        progress, todo, failed = begin(runs, tasks, self.session)
        submitted = self.executor.map_array(SlurmRun(), [t for _, t in todo]) if todo else []
        if submitted:
            print(f"slurm: submitted {len(submitted)} job(s), first {submitted[0].job_id}")
        pending = {job: item for job, item in zip(submitted, todo, strict=True)}
        restore = on_signals()
        poll = 1.0 if self.cfg.slurm_cluster == "local" else 15.0
        try:
            while pending:
                seen_running(progress, pending.values(), self.session)
                for job in [j for j in pending if j.done()]:
                    run, _ = pending.pop(job)
                    if not ended(run, job.result, progress):
                        failed.append(run)
                progress.status(waiting=len(pending) - len(progress.running))
                if pending:
                    time.sleep(poll)
        except (KeyboardInterrupt, SweepInterrupted) as e:
            for job in pending:
                job.cancel(check=False)
            wait_unlocked([task.lock for _, task in pending.values()], STOP_GRACE_S + 30)
            code = e.exit_code if isinstance(e, SweepInterrupted) else 130
            stopped = ", ".join(progress.running) or "no run"
            raise SweepInterrupted(stopped, code) from None
        finally:
            restore()
        return failed


def _mem(gb: float | None) -> str | None:
    if not gb:
        return None
    return f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"
