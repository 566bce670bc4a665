"""Keep freed host memory in the process for reuse (glibc malloc), instead of returning it.

By default glibc serves every allocation above ~32 MB (a batch's activations, its logits, their
gradients) with a fresh ``mmap`` and unmaps it on free. A CPU training step frees and
re-allocates the same few GB every step, so the kernel zero-fills ~1.8 GB of new pages per step
(~450k page faults for SmolLM2-135M at batch 2): 6-15% of a CPU step (``docs/performance.md``).
With ``mmap`` disabled and trimming raised, freed blocks stay on the heap and the next step
reuses them. The price: memory freed after a peak is not handed back to the OS while the process
lives, so RSS stays at its high-water mark (the peak itself is unchanged up to fragmentation).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1  # mallopt takes a C int

_applied = False  # malloc options are process-wide: set them once per process


def reuse_freed_memory() -> bool:
    """Make this process's glibc malloc keep freed memory; True if it did (or already had).

    A no-op returning False where there is no glibc ``mallopt`` (macOS, Windows, musl).
    It affects later allocations only, and the whole process.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl's mallopt does nothing)
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
    return _applied
