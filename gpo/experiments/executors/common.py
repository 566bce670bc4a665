"""What the cluster executors share: one task per run on a worker, the checks before the fan-out,
the interrupt handling.

A task runs the same ``gpo train`` command as the local executor, as a child process of the
worker, with its output appended to ``runs/<name>/train.log``. It decides ``--resume`` when it
starts, so a retried task (its worker died) or a requeued job continues from the run's newest
checkpoint. While it runs it holds ``locks/<name>.lock`` (``flock``), and so does its child:
a retry waits until the previous attempt's process has really gone, so no run folder ever has
two writers. The child is killed with its worker (``PR_SET_PDEATHSIG``), never left behind.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

LOCKS_DIR = "locks"
#: `gpo train` reads the options that hold credentials from this variable (JSON).
SECRET_OPTIONS_ENV = "GPO_TRAIN_SECRET_OPTIONS"
#: A cluster sweep's workers find the full values of masked options here (JSON).
SWEEP_SECRETS_ENV = "GPO_SWEEP_SECRETS"
SWEEP_JSON = "sweep.json"  # written by the driver before the fan-out
#: Seconds a stopped run gets to finish its step and write a checkpoint before it is killed
#: (`gpo train` checkpoints on SIGTERM; a kill loses at most ``save_steps`` steps).
STOP_GRACE_S = 60.0
#: Seconds a task waits for an earlier attempt at its run (a killed worker's child) to exit.
LOCK_WAIT_S = 600.0

#: Execs the command with SIGKILL as its parent-death signal (Linux), so that a worker killed
#: with ``kill -9`` takes its `gpo train` with it. (``preexec_fn`` would do it without an extra
#: exec, but it is unsafe in a threaded process, and Ray workers are threaded.)
_DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "if sys.platform == 'linux': ctypes.CDLL(None).prctl(1, 9)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(137)\n"  # the parent died before prctl
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class SweepInterrupted(Exception):
    """Ctrl-C or SIGTERM reached the sweep; its running runs were stopped."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # 130 for SIGINT, 143 for SIGTERM, as `gpo train`


def raise_interrupted(signum: int, _frame: Any) -> None:
    raise SweepInterrupted(signal.Signals(signum).name, 128 + signum)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (`gpo train` checkpoints and exits), then SIGKILL after :data:`STOP_GRACE_S`."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # poll, not wait(): this also runs inside a signal handler
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or fail in one line that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"--executor {extra} needs {module}: pip install 'gpo[{extra}]' "
            f"(in a checkout: pip install -e '.[{extra}]')"
        ) from None


def check_writable(folder: Path) -> None:
    """Fail in one line, before anything runs, when ``folder`` cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"sweep folder {folder} is not writable: {e.strerror or e}") from None


def probe_folder(folder: str, token: str) -> str:
    """On a worker: '' if it sees the driver's ``token`` file in ``folder`` and can write there,
    else what is wrong (the sweep folder must be storage that every node shares)."""
    host = socket.gethostname()
    if not (Path(folder) / token).is_file():
        return f"worker {host} does not see the sweep folder {folder} (not shared storage?)"
    try:
        mine = Path(folder) / f"{token}.{host}.{os.getpid()}"
        mine.write_text(host)
        mine.unlink()
    except OSError as e:
        return f"worker {host} cannot write to the sweep folder {folder}: {e.strerror or e}"
    return ""


@dataclass
class Task:
    """One command for a worker: a run, or the pre-build before the fan-out."""

    name: str
    log: Path  # the command's output (appended)
    lock: Path  # held while it runs: one writer per run folder
    #: The command after the worker's Python, with credentials masked (:func:`worker_command`).
    #: Plain strings: a worker unpickles a task without importing gpo's modules (and torch).
    args: list[str]
    done_file: Path | None = None  # exists: the task has nothing to do
    #: Exists when the task starts: ``--resume`` (decided then, so a retried or requeued task
    #: resumes from its newest checkpoint).
    resume_if: Path | None = None
    #: A file the driver wrote in the sweep folder: a worker that does not see it is not on the
    #: shared storage, and must not create the folder on its own disk.
    shared: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # on top of the worker's environment
    session: str = ""  # the driver's id, written into the lock (progress: "running")


@dataclass
class Outcome:
    name: str
    code: int
    seconds: float
    host: str
    skipped: bool = False


class ChildKilled(RuntimeError):
    """The task's `gpo train` was killed (SIGKILL, e.g. the OOM killer): retried."""


#: The children of the task running in this process (Slurm's checkpoint signal stops them).
RUNNING: list[subprocess.Popen[bytes]] = []


def _acquire(task: Task) -> int:
    task.lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(task.lock, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeError(
                    f"{task.name}: an earlier attempt still holds {task.lock}"
                ) from None
            time.sleep(0.5)
    note = {"session": task.session, "host": socket.gethostname(), "pid": os.getpid()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({**note, "started": time.time()}).encode(), 0)
    return fd


def run_task(task: Task) -> Outcome:
    """Run ``task`` on this worker (a Ray task, a Slurm job) and wait for its command."""
    t0, host = time.monotonic(), socket.gethostname()
    if task.shared is not None and not task.shared.is_file():
        raise RuntimeError(
            f"worker {host} does not see {task.shared} (the sweep folder must be shared storage)"
        )
    fd = _acquire(task)
    try:
        if task.done_file is not None and task.done_file.is_file():
            return Outcome(task.name, 0, 0.0, host, skipped=True)
        cmd, extra = worker_command(task)
        env = {**os.environ, **task.env, **extra}
        task.log.parent.mkdir(parents=True, exist_ok=True)
        wrapped = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]
        with open(task.log, "ab") as log:
            proc = subprocess.Popen(
                wrapped, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=(fd,)
            )
            RUNNING.append(proc)
            try:
                while proc.poll() is None:
                    time.sleep(0.2)
            except BaseException:  # Ray's cancel (KeyboardInterrupt), a requeue's SystemExit
                stop([proc])
                raise
            finally:
                RUNNING.remove(proc)
    finally:
        os.close(fd)
    if proc.returncode == -signal.SIGKILL:
        raise ChildKilled(f"{task.name}: gpo train was killed (SIGKILL) on {host}")
    return Outcome(task.name, proc.returncode, time.monotonic() - t0, host)


def worker_command(task: Task) -> tuple[list[str], dict[str, str]]:
    """On the worker: the task's argv with this Python (and ``--resume`` if its run started),
    and the environment that gives `gpo train` its masked options back: each masked value in
    argv that :data:`SWEEP_SECRETS_ENV` maps to the full one goes in :data:`SECRET_OPTIONS_ENV`."""
    cmd = [sys.executable, *task.args]
    if task.resume_if is not None and task.resume_if.is_file():
        cmd.append("--resume")
    known = json.loads(os.environ.get(SWEEP_SECRETS_ENV) or "{}")
    secret = {
        flag[2:].replace("-", "_"): known[value]
        for flag, value in zip(task.args, task.args[1:], strict=False)
        if flag.startswith("--") and value in known
    }
    return cmd, ({SECRET_OPTIONS_ENV: json.dumps(secret)} if secret else {})


def run_tasks(
    runs: list[Any], sweep_dir: Path, cpus: int, args: Callable[[Any], list[str]]
) -> list[Task]:
    """A task per run (``args(run)``: its command after Python), each with ``cpus`` threads."""
    return [
        Task(
            name=run.name,
            log=run.dir / "train.log",
            lock=sweep_dir / LOCKS_DIR / f"{run.name}.lock",
            args=args(run),
            done_file=run.dir / "summary.json",
            resume_if=run.dir / "config.json",
            shared=sweep_dir / SWEEP_JSON,
            env=threads_env(cpus),
        )
        for run in runs
    ]


def threads_env(cpus: int) -> dict[str, str]:
    """A run's threads: its cores (as ``--jobs`` gives each local run its share), or ours."""
    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(cpus)}


def lock_note(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def wait_unlocked(paths: list[Path], timeout: float) -> list[Path]:
    """Wait until no process holds any of ``paths``; the ones still held at ``timeout``."""
    deadline = time.monotonic() + timeout
    held = list(paths)
    while held:
        for path in list(held):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                held.remove(path)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                held.remove(path)
            except BlockingIOError:
                pass
            finally:
                os.close(fd)
        if not held or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return held


def on_signals() -> Callable[[], None]:
    """SIGTERM raises :class:`SweepInterrupted` (Ctrl-C raises KeyboardInterrupt); returns the
    function that puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    return lambda: signal.signal(signal.SIGTERM, previous)


def forwarded_env() -> dict[str, str]:
    """The driver's variables a remote worker needs: gpo's (``GPO_CACHE_DIR``, a judge key),
    Hugging Face's and the thread settings. (A local instance's workers inherit them anyway.)"""
    prefixes = ("GPO_", "HF_", "TRANSFORMERS_", "OMP_", "MKL_")
    return {k: v for k, v in os.environ.items() if k.startswith(prefixes)}
