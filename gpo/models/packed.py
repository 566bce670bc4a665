"""Linear layers with MKL-prepacked weights, for decoding on CPU.

A decode step multiplies a few rows by every weight matrix; ``F.linear`` then repacks each
weight into MKL's blocked layout on every call, which costs about as much as the multiply
itself at batch 32. Packing once per sampling call (``cblas_sgemm_pack`` through
``torch.ops.mkl``, as inductor's CPU freezing does) removes that. The results equal
``F.linear``'s up to float rounding (bitwise for most shapes; tested on draws and log-probs),
so the sampled distribution does not change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

#: The row count MKL is told to expect (only a hint: any row count gives the same results).
ROWS_HINT = 32


class PackedLinear(nn.Module):
    """``linear``'s forward on a weight packed once; inference only (no autograd through it)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.packed = torch.ops.mkl._mkl_reorder_linear_weight(linear.weight.detach(), ROWS_HINT)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, self.bias, ROWS_HINT)


def can_pack(model: nn.Module) -> bool:
    """MKL present, and the model's weights are float32 on the CPU."""
    if not torch.backends.mkl.is_available() or not hasattr(torch.ops.mkl, "_mkl_linear"):
        return False
    p = next(model.parameters(), None)
    return p is not None and p.device.type == "cpu" and p.dtype == torch.float32


@contextmanager
def packed_linears(model: nn.Module) -> Iterator[Any]:
    """Swap every plain ``nn.Linear`` of ``model`` for a :class:`PackedLinear` sharing its
    weight, and put the originals back afterwards; a no-op where :func:`can_pack` is False."""
    if not can_pack(model):
        yield model
        return
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:  # not LoRA's or other wrapped layers
                    setattr(parent, name, PackedLinear(child))
                    swapped.append((parent, name, child))
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
