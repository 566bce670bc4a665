"""Sequence log-probs of completions under a causal LM, for a :class:`SeqBatch`.

Only completion tokens are scored: the target at position ``t`` is token ``t + 1``, counted when
that token is a completion token. Prompt and padding never contribute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpo.data.collate import SeqBatch

Reduction = Literal["sum", "mean"]


@dataclass
class SequenceLogps:
    """Per-sequence values over completion tokens, ``[2B]`` (chosen rows first)."""

    logps: Tensor  # summed (or mean, by ``reduction``) token log-probs
    tokens: Tensor  # number of completion tokens
    logits_sum: Tensor  # sum over tokens of the vocab-mean logit (TRL's logits/* metric), detached

    def split(self) -> tuple[Tensor, Tensor]:
        """``(chosen, rejected)`` halves of ``logps``."""
        return self.logps.chunk(2)


def sequence_logps(
    model: nn.Module, batch: SeqBatch, reduction: Reduction = "sum"
) -> SequenceLogps:
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    logits = out.logits[:, :-1]
    mask = batch.completion_mask[:, 1:].bool()
    rows = mask.nonzero()[:, 0]
    picked = logits[mask].float()  # [N completion tokens, V]
    token_logps = -F.cross_entropy(picked, batch.input_ids[:, 1:][mask], reduction="none")
    n = batch.input_ids.shape[0]
    logps = torch.zeros(n, dtype=token_logps.dtype, device=logits.device).index_add(
        0, rows, token_logps
    )
    tokens = mask.sum(1)
    if reduction == "mean":
        logps = logps / tokens.clamp(min=1)
    logits_sum = torch.zeros_like(logps).index_add(0, rows, picked.detach().mean(-1))
    return SequenceLogps(logps, tokens, logits_sum.detach())
