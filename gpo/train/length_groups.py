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

Each extra group costs a decoder call of its own, worth :data:`GROUP_COST_TOKENS` padded
tokens: a split that saves less padding than that is not made (for ``0 < max_padding < 1``).
Measured (2026-11-30, SmolLM2 LoRA, the built-in gold data, batch 8): splitting at 10% made 5
groups of 1004 padded tokens out of one of 1099, and the steps 1.4x slower; on the ``variable``
shape of ``bench/vs_trl.py`` (full fine-tuning, 44% padding) splitting is what makes gpo 2-3x
TRL's speed.
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


#: What one more group costs, in padded tokens of computation (a decoder call's fixed work:
#: every layer's small matmuls and kernels, LoRA's too). From the measurement above: 4 extra
#: groups cost 1.3 s a step where a padded token costs ~3 ms, i.e. ~130 tokens each.
GROUP_COST_TOKENS = 128


def _within(pairs: Sequence[TokenizedPair], shared: bool, max_padding: float) -> bool:
    padded, real = computed_tokens(pairs, shared)
    return padded - real <= max_padding * padded


def length_groups(
    pairs: Sequence[TokenizedPair], shared: bool, max_padding: float
) -> list[list[int]]:
    """Positions in ``pairs`` of each group; together a permutation of ``range(len(pairs))``.

    One group in the given order when the whole micro-batch is within ``max_padding``;
    otherwise consecutive runs of the pairs sorted by their padded length as a pair, each
    extended while it stays within ``max_padding`` (a single pair always is a group). For
    ``0 < max_padding``, those groups only if they save more padded tokens than
    :data:`GROUP_COST_TOKENS` per extra group.
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
    if max_padding > 0:
        split = sum(computed_tokens([pairs[i] for i in g], shared)[0] for g in groups)
        whole = computed_tokens(pairs, shared)[0]
        if split + GROUP_COST_TOKENS * (len(groups) - 1) >= whole:
            return [list(range(len(pairs)))]
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
