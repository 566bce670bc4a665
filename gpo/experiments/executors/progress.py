"""What a sweep prints while it runs: a line per run start and end, as the local executor's,
and for the cluster executors a status line (done, running, failed, waiting, time left)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gpo.experiments.executors.common import Outcome, Task, lock_note, wait_unlocked


def describe(run_dir: Path, seconds: float) -> str:
    """A finished run in one line: its time, final win rate, KL and eval loss."""
    summary = json.loads((run_dir / "summary.json").read_text())
    ev = summary.get("eval", {})
    parts = [f"done in {seconds:.0f} s"]
    if "eval/win_rate" in ev:
        parts.append(f"win rate {ev['eval/win_rate']:.3f} +- {ev['eval/win_rate_se']:.3f}")
    if "eval/kl" in ev:
        parts.append(f"KL {ev['eval/kl']:.3g} +- {ev['eval/kl_se']:.2g}")
    if "eval/loss" in ev:
        parts.append(f"eval loss {ev['eval/loss']:.4g}")
    return ", ".join(parts)


def tail(path: Path) -> str:
    """The last non-empty line of a log (what a failed run said last)."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return "(no log)"
    return lines[-1] if lines else "(no output)"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class Progress:
    """The local executor's per-run lines, and a status line whenever the counts change (at
    least every ``every`` seconds): done, running, failed, waiting, and the time left at the
    mean duration of the runs finished so far."""

    def __init__(self, names: list[str], every: float = 60.0) -> None:
        self.n = len(names)
        self.index = {name: k + 1 for k, name in enumerate(names)}
        self.done = self.failed = 0
        self.running: dict[str, float] = {}  # name -> when it was seen running
        self.seconds: list[float] = []
        self.every, self._last, self._said = every, 0.0, ""

    def line(self, name: str, text: str) -> None:
        print(f"[{self.index[name]}/{self.n}] {name}: {text}", flush=True)

    def skipped(self, name: str) -> None:
        self.done += 1
        self.line(name, "finished before, skipped")

    def started(self, name: str, where: str) -> None:
        if name not in self.running:
            self.running[name] = time.monotonic()
            self.line(name, f"started on {where}" if where else "started")

    def finished(self, name: str, ok: bool, seconds: float, text: str) -> None:
        self.running.pop(name, None)
        if ok:
            self.done += 1
            self.seconds.append(seconds)
        else:
            self.failed += 1
        self.line(name, text)

    def status(self, waiting: int) -> None:
        counts = (
            f"{self.done}/{self.n} done, {len(self.running)} running, {self.failed} failed, "
            f"{waiting} waiting"
        )
        now = time.monotonic()
        if counts == self._said and now - self._last < self.every:
            return
        text = f"sweep: {counts}"
        if self.seconds and (waiting or self.running):
            mean = sum(self.seconds) / len(self.seconds)
            at_once = max(1, len(self.running))
            busy = sum(max(0.0, mean - (now - t)) for t in self.running.values())
            text += f"; about {_minutes((mean * waiting + busy) / at_once)} left"
        print(text, flush=True)
        self._said, self._last = counts, now


def begin(
    runs: list[Any], tasks: list[Task], session: str
) -> tuple[Progress, list[Any], list[Any]]:
    """The progress (finished runs said skipped), the ``(run, task)`` pairs to start, and the
    runs still running from an earlier sweep (their lock is held: e.g. a Slurm job of a driver
    whose login session dropped), which are not started a second time."""
    progress = Progress([r.name for r in runs])
    todo, busy = [], []
    for run, task in zip(runs, tasks, strict=True):
        if run.done:
            progress.skipped(run.name)
        elif task.lock.exists() and wait_unlocked([task.lock], 0):
            progress.finished(
                run.name,
                False,
                0.0,
                "still running from an earlier sweep "
                f"({lock_note(task.lock).get('host', '?')}): not started again",
            )
            busy.append(run)
        else:
            task.session = session
            todo.append((run, task))
    return progress, todo, busy


def seen_running(progress: Progress, pending: Iterable[tuple[Any, Task]], session: str) -> None:
    """Runs whose task of this session holds their lock have started (and where)."""
    for run, task in pending:
        note = lock_note(task.lock)
        if note.get("session") == session:
            progress.started(run.name, note.get("host", ""))


def ended(run: Any, result: Callable[[], Outcome], progress: Progress) -> bool:
    """Say how a run's task ended (``result``: its outcome, or its error); True if it finished."""
    log = run.dir / "train.log"
    try:
        out = result()
    except Exception as e:  # retries used up, or the task itself failed
        reason = " ".join(str(e).split())[-300:]
        progress.finished(run.name, False, 0.0, f"FAILED: {reason} (log: {log})")
        return False
    progress.started(run.name, out.host)
    if out.code == 0 and run.done:
        progress.finished(run.name, True, out.seconds, describe(run.dir, out.seconds))
        return True
    text = f"FAILED (exit {out.code}): {tail(log)} (log: {log})"
    progress.finished(run.name, False, out.seconds, text)
    return False


def prebuilt(tasks: list[Task], results: list[Callable[[], Outcome]], t0: float) -> None:
    """Wait for the pre-build tasks; a failure is a warning (the runs compute what it missed)."""
    for task, result in zip(tasks, results, strict=True):
        try:
            ok = result().code == 0
        except Exception:
            ok = False
        if not ok:
            print(f"sweep: {task.name} failed (see {task.log}); the runs compute it")
    print(
        f"sweep: pi_ref's log-probs and opponents pre-built for {len(tasks)} group(s) in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
