"""Sequence log-probs of completions under a causal LM, for a :class:`SeqBatch`.

Only completion tokens are scored: the target at position ``t`` is token ``t + 1``, counted when
that token is a completion token. Prompt and padding never contribute.

Fast path: the decoder runs on the whole batch but the LM head only on the positions that
predict a completion token, so full-vocabulary logits are never built for prompt and padding
positions. Models that post-process their logits (soft-capping, scaling) would differ there, so
the first call on a model compares both paths and keeps the fast one only if they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpo.data.collate import SeqBatch

Reduction = Literal["sum", "mean"]
_FAST_OK = "_gpo_fast_logps_ok"


@dataclass
class SequenceLogps:
    """Per-sequence values over completion tokens, ``[2B]`` (chosen rows first)."""

    logps: Tensor  # summed (or mean, by ``reduction``) token log-probs
    tokens: Tensor  # number of completion tokens
    logits_sum: Tensor  # sum over tokens of the vocab-mean logit (TRL's logits/* metric), detached

    def split(self) -> tuple[Tensor, Tensor]:
        """``(chosen, rejected)`` halves of ``logps``."""
        return self.logps.chunk(2)


def _completion_logits(model: nn.Module, batch: SeqBatch, mask: Tensor, fast: bool) -> Tensor:
    """Logits ``[N completion tokens, V]`` at the positions predicting completion tokens."""
    kwargs = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "position_ids": batch.position_ids,
        "use_cache": False,
    }
    if fast:
        hidden = model.get_decoder()(**kwargs).last_hidden_state  # type: ignore[operator]
        return model.get_output_embeddings()(hidden[:, :-1][mask])  # type: ignore[operator]
    return model(**kwargs).logits[:, :-1][mask]


def _can_be_fast(model: nn.Module) -> bool:
    try:
        return model.get_decoder() is not None and model.get_output_embeddings() is not None
    except (AttributeError, NotImplementedError):
        return False


def _use_fast(model: nn.Module, batch: SeqBatch, mask: Tensor) -> bool:
    ok = getattr(model, _FAST_OK, None)
    if ok is None:
        ok = _can_be_fast(model)
        if ok:
            with torch.no_grad():
                fast = _completion_logits(model, batch, mask, True)
                plain = _completion_logits(model, batch, mask, False)
            ok = bool(torch.allclose(fast, plain, rtol=1e-4, atol=1e-4))
        setattr(model, _FAST_OK, ok)
    return ok


def sequence_logps(
    model: nn.Module, batch: SeqBatch, reduction: Reduction = "sum", fast: bool | None = None
) -> SequenceLogps:
    """Completion log-probs of every sequence; ``fast=None`` picks the path as described above."""
    mask = batch.completion_mask[:, 1:].bool()
    use_fast = _use_fast(model, batch, mask) if fast is None else fast
    picked = _completion_logits(model, batch, mask, use_fast).float()  # [N tokens, V]
    rows = mask.nonzero()[:, 0]
    token_logps = -F.cross_entropy(picked, batch.input_ids[:, 1:][mask], reduction="none")
    n = batch.input_ids.shape[0]
    logps = torch.zeros(n, dtype=token_logps.dtype, device=picked.device)
    logps = logps.index_add(0, rows, token_logps)
    tokens = mask.sum(1)
    if reduction == "mean":
        logps = logps / tokens.clamp(min=1)
    logits_sum = torch.zeros_like(logps).index_add(0, rows, picked.detach().mean(-1))
    return SequenceLogps(logps, tokens, logits_sum.detach())


class PolicyLogps(nn.Module):
    """Wraps a causal LM so that one ``forward`` returns completion log-probs.

    The trainer prepares this wrapper (not the bare LM) with Accelerate: under DDP the fast path's
    separate decoder and head calls then still go through one DDP ``forward``.
    """

    def __init__(self, model: nn.Module, reduction: Reduction = "sum") -> None:
        super().__init__()
        self.model = model
        self.reduction: Reduction = reduction

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        completion_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch = SeqBatch(input_ids, attention_mask, position_ids, completion_mask)
        out = sequence_logps(self.model, batch, self.reduction)
        return out.logps, out.tokens, out.logits_sum
