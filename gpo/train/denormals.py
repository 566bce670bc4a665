"""Denormal floats flushed to zero while a run trains (CPU).

A saturated loss term (JS-IUPO's ``sigmoid(-log u)`` for a pair separated by > 87 nats, Savage at
large ``beta rho``) hands the backward pass gradients below float32's smallest normal number,
1.2e-38, and every CPU matmul they reach runs ~100x slower: such steps took 4.3x longer on
SmolLM2 (``bench/denormals.py``, docs/performance.md). Read and written as 0 they change nothing
an optimizer step can see (AdamW's eps is 1e-8). The setting is CPU state shared by the whole
process, so it is restored when the run ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def flushing() -> bool:
    """Whether CPU math flushes denormals now (torch can set this but not read it)."""
    return (torch.tensor([1e-40]) * 1.0).item() == 0.0


@contextmanager
def denormals_flushed(enabled: bool = True) -> Iterator[None]:
    """Flush denormals inside the block (if ``enabled`` and the CPU can); restore on exit."""
    if not enabled:
        yield
        return
    before = flushing()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
