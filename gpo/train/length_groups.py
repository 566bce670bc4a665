"""Padding-free training: a micro-batch split into length-homogeneous groups.

A padded batch computes every row up to the batch's longest one. On real preference data
(prompts of 20 to 1,000+ tokens, responses of a few to several hundred) most of that can be
padding. The trainer therefore runs a micro-batch as several groups of pairs of similar lengths,
each padded only to its own longest row, all inside one forward call of the policy wrapper, and
puts the per-sequence log-probs back in the micro-batch's pair order before the loss. The loss,
the one backward pass, gradient accumulation and DDP's single gradient sync per optimizer step
are then exactly those of the padded batch: the groups change which rows share a matmul, not
which pairs an optimizer step sees or how its gradient is formed (float rounding aside).

``max_padding`` (``TrainConfig``) is the share of a group's computed tokens that may be
padding. A micro-batch within it runs as it is (one group, pair order unchanged: fixed-length
data is untouched); otherwise its pairs are sorted by length and cut greedily into consecutive
groups that stay within it. A single pair is always a group of its own, so ``0`` means one pair
per group. What is left then is the padding inside a pair: its shorter response is padded to the
longer one (both responses run in one decoder call, on the prompt's shared KV cache).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gpo.data.tokenize import TokenizedPair
from gpo.models.logps import SequenceLogps


def computed_tokens(pairs: Sequence[TokenizedPair], shared: bool) -> tuple[int, int]:
    """``(padded, real)`` token counts of ``pairs`` collated as one batch.

    ``shared`` (prefix sharing): each prompt once, padded to the longest prompt, and both
    responses padded to the longest response (``collate_shared``). Otherwise 2B rows prompt +
    response, each padded to the longest such row (``collate_pairs``).
    """
    n = len(pairs)
    responses = [max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
    if shared:
        padded = n * max(len(p.prompt_ids) for p in pairs) + 2 * n * max(responses)
        real = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    else:
        padded = 2 * n * max(len(p.prompt_ids) + r for p, r in zip(pairs, responses, strict=True))
        real = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    return padded, real


def _within(pairs: Sequence[TokenizedPair], shared: bool, max_padding: float) -> bool:
    padded, real = computed_tokens(pairs, shared)
    return padded - real <= max_padding * padded


def length_groups(
    pairs: Sequence[TokenizedPair], shared: bool, max_padding: float
) -> list[list[int]]:
    """Positions in ``pairs`` of each group; together a permutation of ``range(len(pairs))``.

    One group in the given order when the whole micro-batch is within ``max_padding``;
    otherwise consecutive runs of the pairs sorted by their padded length as a pair, each
    extended while it stays within ``max_padding`` (a single pair always is a group).
    """
    if not pairs:
        return []
    if max_padding >= 1 or _within(pairs, shared, max_padding):
        return [list(range(len(pairs)))]
    order = sorted(range(len(pairs)), key=lambda i: computed_tokens([pairs[i]], shared)[0])
    groups: list[list[int]] = [[order[0]]]
    for i in order[1:]:
        candidate = [*groups[-1], i]
        if _within([pairs[j] for j in candidate], shared, max_padding):
            groups[-1] = candidate
        else:
            groups.append([i])
    return groups


def merge_groups(parts: Sequence[SequenceLogps], groups: Sequence[Sequence[int]]) -> SequenceLogps:
    """The groups' per-sequence values (each chosen-first) as one micro-batch's, in pair order.

    Indexing keeps the autograd graph: gradients flow back to every group's forward.
    """
    if len(parts) == 1 and list(groups[0]) == list(range(len(groups[0]))):
        return parts[0]
    device = parts[0].logps.device
    order = torch.tensor([i for g in groups for i in g], device=device)
    inverse = torch.argsort(order)

    def join(name: str) -> torch.Tensor:
        halves = [getattr(p, name).chunk(2) for p in parts]
        chosen = torch.cat([h[0] for h in halves])[inverse]
        rejected = torch.cat([h[1] for h in halves])[inverse]
        return torch.cat([chosen, rejected])

    return SequenceLogps(join("logps"), join("tokens"), join("logits_sum"))
