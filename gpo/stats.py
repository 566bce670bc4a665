"""Mean and standard error: the one convention behind every reported ``+- SE`` in gpo."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def mean_se(values: Sequence[float] | Any) -> tuple[float, float]:
    """The mean and its standard error (of a sequence or a tensor) ``std(ddof=1) / sqrt(n)``.

    With a single value the standard error is undefined and returned as NaN (not 0, which would
    claim certainty); JSON outputs write it as ``"nan"``. No values: ``ValueError``.
    """
    if hasattr(values, "detach"):  # a torch tensor (not imported here: stats needs no torch)
        values = values.detach().double().flatten().tolist()
    n = len(values)
    if n == 0:
        raise ValueError("mean_se of no values")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
