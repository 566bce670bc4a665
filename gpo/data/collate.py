"""Batch pairs for one forward pass.

:class:`PairBatch`: rows ``0..B-1`` are prompt+chosen and rows ``B..2B-1`` prompt+rejected
(TRL's order). :class:`SharedPromptBatch`: each prompt once, then its two responses, for
prefix sharing (the prompt is run once; see :mod:`gpo.models.logps`).
"""

from __future__ import annotations

from collections.abc import Sequence
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


def pad_rows(
    rows: Sequence[Sequence[int]], pad_id: int, side: Padding = "right"
) -> tuple[Tensor, Tensor]:
    """Token rows as ``[N, L]`` ids (``pad_id`` where a row is short) and an attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        start = 0 if side == "right" else width - len(r)
        ids[i, start : start + len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, start : start + len(r)] = 1
    return ids, mask


def collate_sequences(
    seqs: list[tuple[list[int], list[int]]], pad_id: int, padding_side: Padding = "right"
) -> SeqBatch:
    """Pad ``(prompt_ids, completion_ids)`` pairs into one batch."""
    ids, attn = pad_rows([a + b for a, b in seqs], pad_id, padding_side)
    length = ids.shape[1]
    comp = torch.zeros_like(attn)
    for i, (prompt, completion) in enumerate(seqs):
        n = len(prompt) + len(completion)
        start = 0 if padding_side == "right" else length - n
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


@dataclass
class SharedPromptBatch:
    """``B`` prompts, each once, and their ``2B`` responses (right-padded).

    Response rows are interleaved: row ``2i`` is prompt ``i``'s chosen response, ``2i + 1`` its
    rejected one (the order in which a repeated KV cache lays the prompts out).
    """

    prompt_ids: Tensor  # [B, Lp]
    prompt_mask: Tensor  # [B, Lp]
    completion_ids: Tensor  # [2B, Lc]
    completion_mask: Tensor  # [2B, Lc]
    indices: Tensor  # [B], source rows

    @property
    def num_pairs(self) -> int:
        return int(self.indices.numel())

    def to(self, device: torch.device | str) -> SharedPromptBatch:
        return type(self)(*(getattr(self, f.name).to(device) for f in fields(self)))

    def first(self, n: int) -> SharedPromptBatch:
        """The first ``n`` pairs."""
        return type(self)(
            self.prompt_ids[:n],
            self.prompt_mask[:n],
            self.completion_ids[: 2 * n],
            self.completion_mask[: 2 * n],
            self.indices[:n],
        )

    def unshared(self) -> PairBatch:
        """The same pairs as a :class:`PairBatch` (prompt repeated per response)."""
        b = self.num_pairs
        prompts = [self.prompt_ids[i][self.prompt_mask[i].bool()].tolist() for i in range(b)]
        replies = [
            self.completion_ids[j][self.completion_mask[j].bool()].tolist() for j in range(2 * b)
        ]
        seqs = [(prompts[i], replies[2 * i]) for i in range(b)]
        seqs += [(prompts[i], replies[2 * i + 1]) for i in range(b)]
        out = collate_sequences(seqs, pad_id=0).to(self.prompt_ids.device)  # pad: masked out
        return PairBatch(*(getattr(out, f.name) for f in fields(out)), self.indices)


def collate_shared(pairs: list[TokenizedPair], pad_id: int) -> SharedPromptBatch:
    """Each prompt once and its responses interleaved; every prompt must have a token."""
    if any(not p.prompt_ids for p in pairs):
        raise ValueError("prefix sharing needs a non-empty prompt in every pair")
    prompt_ids, prompt_mask = pad_rows([p.prompt_ids for p in pairs], pad_id)
    replies = [r for p in pairs for r in (p.chosen_ids, p.rejected_ids)]
    completion_ids, completion_mask = pad_rows(replies, pad_id)
    indices = torch.tensor([p.index for p in pairs], dtype=torch.long)
    return SharedPromptBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, indices)


def collate_for_training(
    pairs: list[TokenizedPair], pad_id: int, share_prompt: bool
) -> PairBatch | SharedPromptBatch:
    """:func:`collate_shared` when asked for and possible (all prompts non-empty), else pairs."""
    if share_prompt and all(p.prompt_ids for p in pairs):
        return collate_shared(pairs, pad_id)
    return collate_pairs(pairs, pad_id)
