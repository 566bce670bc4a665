"""Held-out evaluation: offline pair metrics, on-policy KL, and the gold win rate."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gpo.data.collate import collate_for_training, collate_sequences
from gpo.data.tokenize import TokenizedPair
from gpo.logps import Reduction, batch_logps, sequence_logps
from gpo.metrics import concat_values, pair_values, reduce_metrics
from gpo.objectives import Objective
from gpo.reference import Reference
from gpo.sampling import sample


def mean_se(values: Tensor) -> tuple[float, float]:
    """Mean and its standard error (0 for a single value)."""
    n = values.numel()
    se = values.std().item() / math.sqrt(n) if n > 1 else 0.0
    return values.mean().item(), se


@torch.no_grad()
def pair_metrics(
    policy: nn.Module,
    reference: Reference,
    objective: Objective,
    pairs: Sequence[TokenizedPair],
    beta: float,
    reduction: Reduction,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    gather: Callable[[dict[str, Tensor]], dict[str, Tensor]] = lambda v: v,
    share_prompt: bool = True,
) -> dict[str, float]:
    """Offline metrics on ``pairs`` (this process's shard), with TRL's names."""
    was_training = policy.training
    policy.eval()
    chunks = []
    for k in range(0, len(pairs), batch_size):
        chunk = list(pairs[k : k + batch_size])
        batch = collate_for_training(chunk, pad_id, share_prompt).to(device)
        pol = batch_logps(policy, batch, reduction)
        ref = reference.logps(batch, reduction)
        out = objective(*pol.split(), *ref.split(), beta)
        chunks.append(pair_values(out, pol, ref, beta))
    policy.train(was_training)
    return reduce_metrics(gather(concat_values(chunks)))


def on_policy_kl(
    policy: nn.Module,
    reference: Reference,
    tokenizer: Any,
    prompt_ids: Sequence[list[int]],
    num_samples: int,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 16,
) -> tuple[float, float]:
    """Monte Carlo ``KL(pi_theta || pi_ref) = E_{y ~ pi_theta}[log pi_theta(y) - log pi_ref(y)]``.

    Completions are drawn at temperature 1 from the full vocabulary and cut at ``max_new_tokens``:
    this is the exact KL between the two distributions over completions truncated at that length.
    Returns the mean and its standard error over the ``len(prompt_ids) * num_samples`` draws.
    """
    samples = sample(policy, tokenizer, prompt_ids, num_samples, max_new_tokens, seed=seed)
    seqs = [
        (list(prompt_ids[i]), ids)
        for i, ids in zip(samples.prompt_index, samples.completion_ids, strict=True)
        if ids
    ]
    device = next(policy.parameters()).device
    pad = tokenizer.pad_token_id
    diffs = []
    was_training = policy.training
    policy.eval()
    for k in range(0, len(seqs), batch_size):
        batch = collate_sequences(seqs[k : k + batch_size], pad).to(device)
        with torch.no_grad():
            diffs.append(sequence_logps(policy, batch).logps - reference.logps(batch).logps)
    policy.train(was_training)
    return mean_se(torch.cat(diffs))


def gold_win_rate(
    policy: nn.Module,
    reference: Reference,
    tokenizer: Any,
    prompts: Sequence[str],
    prompt_ids: Sequence[list[int]],
    max_new_tokens: int,
    seed: int,
) -> tuple[float, float]:
    """Win rate of ``pi_theta`` against ``pi_ref`` on held-out prompts, judged by the gold task."""
    from gpo.gold import gold_win_rate as judge

    mine = sample(policy, tokenizer, prompt_ids, 1, max_new_tokens, seed=seed)
    with reference.model() as ref:
        theirs = sample(ref, tokenizer, prompt_ids, 1, max_new_tokens, seed=seed + 1)
    return judge(list(prompts), mine.text, theirs.text)
