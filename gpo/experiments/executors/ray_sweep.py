"""``gpo sweep --executor ray``: one Ray task per run, on a local Ray instance or a cluster.

Each task runs the run's `gpo train` command on a worker (:func:`common.run_task`) with
``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs. A worker that dies is retried by Ray, and the
retry resumes from the run's newest checkpoint. The sweep folder must be storage that every
node sees; on a cluster (``--ray-address``) a probe task checks it before any run starts. On a
local instance (one node, this machine's folder) there is nothing to probe and nothing to
pre-build: the runs share this machine's cache, as the local executor's do.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
import warnings
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gpo.experiments.executors.common import (
    STOP_GRACE_S,
    ChildKilled,
    SweepInterrupted,
    Task,
    forwarded_env,
    on_signals,
    probe_folder,
    require,
    run_task,
    wait_unlocked,
)
from gpo.experiments.executors.progress import begin, ended, prebuilt, seen_running

#: Times Ray restarts a run whose worker died (each retry resumes from its checkpoint).
MAX_RETRIES = 3


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """One line, at once, for an address nothing listens on (Ray itself retries for a minute)."""
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    default = 10001 if parts.scheme == "ray" else 6379
    try:
        host, port = parts.hostname, parts.port or default
    except ValueError as e:
        raise ValueError(f"--ray-address {address}: {e}") from None
    if not host:
        raise ValueError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ValueError(
            f"--ray-address {address}: cannot reach {host}:{port} ({reason})"
        ) from None


def kill_monitor(ray: Any) -> None:
    """Stop our own instance's autoscaler monitor before ``ray.shutdown``, which would give it
    1 s to exit on SIGTERM, let the second pass (it does not exit), then SIGKILL it: the same
    end, a second sooner. Ray's private API, so nothing happens where it is not there."""
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    for info in getattr(node, "all_processes", {}).get("monitor", []):
        process = getattr(info, "process", None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=5)


class RayExecutor:
    """Connects (or starts a local instance), checks, pre-builds, fans out, reports progress."""

    def __init__(self, cfg: Any, address: str | None) -> None:
        self.ray = require("ray", "ray")
        self.cfg, self.address = cfg, address
        self.session = uuid.uuid4().hex[:12]
        self.connected = False
        self.nodes = 0  # alive nodes, once connected
        self.checked = False  # connect's checks passed
        self._task: Any = None

    def connect(self, sweep_dir: Path, env: dict[str, str]) -> None:
        """Everything that can fail before a run starts: the address, the resources, whether a
        worker sees and can write the sweep folder. ``env``: what the workers need from ours."""
        ray, cfg = self.ray, self.cfg
        t0 = time.perf_counter()
        if self.address is not None:
            check_reachable(self.address)
        extra: dict[str, Any] = {}
        if self.address is None:  # a local instance's workers inherit our environment
            os.environ.update(env)
        else:  # a cluster's workers get it from the job (a runtime env: ~1 s per worker)
            extra["runtime_env"] = {"env_vars": {**forwarded_env(), **env}}
        try:
            with warnings.catch_warnings():  # Ray Client warns, then raises: one line is enough
                warnings.simplefilter("ignore")
                ray.init(
                    address=self.address or "local",
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                    **extra,
                )
        except (ConnectionError, RuntimeError) as e:
            raise ValueError(f"--ray-address {self.address}: {e}") from None
        self.connected = True
        started = time.perf_counter() - t0
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        self.nodes = len(nodes)
        cpus = max((n.get("CPU", 0) for n in nodes), default=0)
        gpus = max((n.get("GPU", 0) for n in nodes), default=0)
        if cfg.gpus_per_run > gpus:
            raise ValueError(
                f"gpus_per_run {cfg.gpus_per_run:g}: no node of the Ray cluster has that many "
                f"GPUs (most on one node: {gpus:g})"
            )
        if cfg.cpus_per_run > cpus:
            raise ValueError(
                f"cpus_per_run {cfg.cpus_per_run}: no node of the Ray cluster has that many CPUs "
                f"(most on one node: {cpus:g})"
            )
        where = f"connected to {self.address}" if self.address else "started a local instance"
        total = ray.cluster_resources()
        said = (
            f"ray: {where} in {started:.1f} s: {len(nodes)} node(s), {total.get('CPU', 0):g} "
            f"CPUs, {total.get('GPU', 0):g} GPUs"
        )
        if self.address is not None:  # our own instance's workers are here, on our folder
            t1 = time.perf_counter()
            self._probe(sweep_dir)
            said += f"; a worker checked the sweep folder in {time.perf_counter() - t1:.1f} s"
        print(said, flush=True)
        self.checked = True

    def wants_prebuild(self) -> bool:
        """The sweep's ``prebuild``, by default only on a cluster of several nodes (on one,
        the runs share its cache, as the local executor's runs do)."""
        return self.cfg.prebuild if self.cfg.prebuild is not None else self.nodes > 1

    def _probe(self, sweep_dir: Path) -> None:
        token = f".probe-{self.session}"
        (sweep_dir / token).write_text("gpo sweep")
        try:
            probe = self.ray.remote(probe_folder).options(num_cpus=0)
            problem = self.ray.get(probe.remote(str(sweep_dir), token), timeout=300)
        finally:
            (sweep_dir / token).unlink(missing_ok=True)
        if problem:
            raise ValueError(problem)

    def close(self) -> None:
        if self.connected:
            t0 = time.perf_counter()
            if self.address is None:
                kill_monitor(self.ray)
            self.ray.shutdown()  # our own instance: its processes are stopped one by one
            self.connected = False
            if self.address is None and self.checked:  # not after a one-line error
                print(
                    f"ray: stopped the local instance in {time.perf_counter() - t0:.1f} s",
                    flush=True,
                )

    def _remote(self) -> Any:
        if self._task is None:
            self._task = self.ray.remote(run_task).options(
                num_cpus=self.cfg.cpus_per_run,
                num_gpus=self.cfg.gpus_per_run,
                max_retries=MAX_RETRIES,  # a dead worker; each retry resumes
                retry_exceptions=[ChildKilled],  # its `gpo train` killed, e.g. by the OOM killer
            )
        return self._task

    def prebuild(self, tasks: list[Task]) -> None:
        """The pre-build tasks, all at once."""
        if tasks:
            t0 = time.perf_counter()
            refs = [self._remote().remote(t) for t in tasks]
            prebuilt(tasks, [partial(self.ray.get, ref) for ref in refs], t0)

    def execute(self, runs: list[Any], tasks: list[Task], jobs: int | None) -> list[Any]:
        """Run the unfinished runs (``jobs``: at most this many at once; default: as many as
        the cluster fits); print progress; return the failed ones."""
        progress, todo, failed = begin(runs, tasks, self.session)
        pending: dict[Any, tuple[Any, Task]] = {}
        restore = on_signals()
        try:
            while todo or pending:
                while todo and len(pending) < (jobs or len(runs)):
                    run, task = todo.pop(0)
                    pending[self._remote().remote(task)] = (run, task)
                ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    run, _ = pending.pop(ref)
                    if not ended(run, partial(self.ray.get, ref), progress):
                        failed.append(run)
                seen_running(progress, pending.values(), self.session)
                progress.status(waiting=len(todo) + len(pending) - len(progress.running))
        except (KeyboardInterrupt, SweepInterrupted) as e:
            self._cancel(pending)
            code = e.exit_code if isinstance(e, SweepInterrupted) else 130
            stopped = ", ".join(progress.running) or "no run"
            raise SweepInterrupted(stopped, code) from None
        finally:
            restore()
        return failed

    def _cancel(self, pending: dict[Any, tuple[Any, Task]]) -> None:
        """Stop the running runs (each gets SIGTERM: a checkpoint) and wait until their
        processes are gone, so that a restarted sweep never meets a leftover writer."""
        for ref in pending:
            self.ray.cancel(ref)
        locks = [task.lock for _, task in pending.values()]
        held = wait_unlocked(locks, STOP_GRACE_S + 30)
        if held:
            print(f"sweep: still running after the grace period: {[p.stem for p in held]}")
