"""Fault injection for the crash tests: ``GPO_FAULT=kill:<point>:<step>`` kills the process.

``save_checkpoint`` calls :func:`fault_point` between the files it writes, so a test can land a
``kill -9`` exactly inside a checkpoint write, where a timer rarely hits (a tiny model's
checkpoint takes milliseconds). Unset (always, outside tests), this is one dict lookup.
"""

from __future__ import annotations

import os
import signal

#: The points in ``save_checkpoint``, in order.
CHECKPOINT_POINTS = (
    "weights",  # model weights written
    "optimizer",  # optimizer.pt written
    "rng",  # scheduler.pt and rng.pt written
    "state",  # state.json written, folder not yet fsynced
    "renamed",  # temp folder renamed into place, old checkpoints not yet removed
    "rotated",  # old checkpoints removed
)


def fault_point(point: str, step: int) -> None:
    spec = os.environ.get("GPO_FAULT")
    if spec and spec == f"kill:{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
