"""Ctrl-C and SIGTERM during training: finish the current step, write a checkpoint, stop with a
one-line hint instead of a traceback (exit code 128 + signal: 130 for SIGINT, 143 for SIGTERM).

A second Ctrl-C stops at once (Python's default ``KeyboardInterrupt``), without a checkpoint.
"""

from __future__ import annotations

import shlex
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import torch

from gpo.train.guards import any_rank


class Interrupted(Exception):
    """The run stopped on a signal after saving a checkpoint at ``step``."""

    def __init__(self, step: int, signum: int, run_dir: Path) -> None:
        self.step, self.signum, self.run_dir = step, signum, run_dir
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        resume = shlex.join(["gpo", "train", "--out", str(run_dir), "--resume"])
        super().__init__(f"{name}: interrupted at step {step}; resume with: {resume}")


class StopRequests:
    """Records the first SIGINT/SIGTERM while installed (see :meth:`installed`)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator[StopRequests]:
        """Handle the signals inside the block (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def requested(self, device: torch.device | str) -> bool:
        """Whether any process got a stop signal (all ranks agree, so all stop together)."""
        return any_rank(self.signum is not None, device)
