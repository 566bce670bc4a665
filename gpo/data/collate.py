"""Batch pairs for one forward pass.

Rows ``0..B-1`` are prompt+chosen and rows ``B..2B-1`` prompt+rejected (TRL's order).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

from gpo.data.tokenize import TokenizedPair


@dataclass
class SeqBatch:
    """Padded (prompt, completion) sequences."""

    input_ids: Tensor  # [N, L]
    attention_mask: Tensor  # [N, L]
    position_ids: Tensor  # [N, L], counted over real tokens so left/right padding agree
    completion_mask: Tensor  # [N, L], 1 on completion tokens (the ones scored)

    def to(self, device: torch.device | str) -> SeqBatch:
        return type(self)(*(getattr(self, f.name).to(device) for f in fields(self)))


@dataclass
class PairBatch(SeqBatch):
    """``2B`` sequences: ``B`` prompt+chosen, then ``B`` prompt+rejected."""

    indices: Tensor  # [B], source rows

    @property
    def num_pairs(self) -> int:
        return int(self.indices.numel())


Padding = Literal["right", "left"]


def collate_sequences(
    seqs: list[tuple[list[int], list[int]]], pad_id: int, padding_side: Padding = "right"
) -> SeqBatch:
    """Pad ``(prompt_ids, completion_ids)`` pairs into one batch."""
    length = max(len(a) + len(b) for a, b in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), length), dtype=torch.long)
    comp = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, (prompt, completion) in enumerate(seqs):
        n = len(prompt) + len(completion)
        start = 0 if padding_side == "right" else length - n
        ids[i, start : start + n] = torch.tensor(prompt + completion, dtype=torch.long)
        attn[i, start : start + n] = 1
        comp[i, start + len(prompt) : start + n] = 1
    positions = (attn.cumsum(1) - 1).clamp(min=0)
    return SeqBatch(ids, attn, positions, comp)


def collate_pairs(
    pairs: list[TokenizedPair], pad_id: int, padding_side: Padding = "right"
) -> PairBatch:
    seqs = [(p.prompt_ids, p.chosen_ids) for p in pairs]
    seqs += [(p.prompt_ids, p.rejected_ids) for p in pairs]
    b = collate_sequences(seqs, pad_id, padding_side)
    indices = torch.tensor([p.index for p in pairs], dtype=torch.long)
    return PairBatch(b.input_ids, b.attention_mask, b.position_ids, b.completion_mask, indices)
