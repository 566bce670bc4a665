"""On-policy KL(pi_theta || pi_ref), estimated from the policy's own samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gpo.data.collate import SeqBatch, collate_sequences
from gpo.models.logps import HEAD_CHUNK, completion_log_probs, sequence_logps
from gpo.models.reference import Reference
from gpo.models.sampling import sample
from gpo.stats import mean_se

#: How :func:`on_policy_kl` turns samples into a KL estimate.
Estimator = Literal["sample", "token"]


def on_policy_kl(
    policy: nn.Module,
    reference: Reference,
    tokenizer: Any,
    prompt_ids: Sequence[list[int]],
    num_samples: int,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 16,
    show_progress: bool = False,
    estimator: Estimator = "sample",
) -> tuple[float, float]:
    """Monte Carlo ``KL(pi_theta || pi_ref) = E_{y ~ pi_theta}[log pi_theta(y) - log pi_ref(y)]``.

    Completions are drawn at temperature 1 from the full vocabulary and cut at ``max_new_tokens``:
    this is the exact KL between the two distributions over completions truncated at that length.
    Returns the mean and its standard error over the ``len(prompt_ids) * num_samples`` draws.
    ``log pi_theta(y)`` comes from the sampler where it has it; only pi_ref scores the samples.

    ``estimator``: ``sample``, each completion's ``log pi_theta(y) - log pi_ref(y)``; ``token``,
    each completion's sum over its positions of the exact next-token KL (:func:`token_kl`), the
    same expectation with a far smaller variance, for one more forward pass of the policy.
    """
    samples = sample(
        policy,
        tokenizer,
        prompt_ids,
        num_samples,
        max_new_tokens,
        seed=seed,
        show_progress=show_progress,
        desc="eval: sampling for KL",
    )
    keep = [k for k, ids in enumerate(samples.completion_ids) if ids]
    seqs = [(list(prompt_ids[samples.prompt_index[k]]), samples.completion_ids[k]) for k in keep]
    device = next(policy.parameters()).device
    pad = tokenizer.pad_token_id
    # The sampler's own log-probs of its draws, where it has them (gpo's decode loop); else the
    # policy scores its samples here.
    mine = None if samples.logps is None else torch.tensor([samples.logps[k] for k in keep])
    if estimator == "token":  # full-vocabulary log-probs of both models at every position
        vocab = int(getattr(getattr(policy, "config", None), "vocab_size", 0) or 1)
        batch_size = max(1, min(batch_size, HEAD_CHUNK // (vocab * max_new_tokens)))
    diffs = []
    was_training = policy.training
    policy.eval()
    for k in range(0, len(seqs), batch_size):
        batch = collate_sequences(seqs[k : k + batch_size], pad).to(device)
        with torch.no_grad():
            if estimator == "token":
                diffs.append(token_kl(policy, reference, batch))
                continue
            if mine is None:
                ours = sequence_logps(policy, batch).logps
            else:
                ours = mine[k : k + batch_size].to(device)
            diffs.append(ours - reference.logps(batch).logps)
    policy.train(was_training)
    return mean_se(torch.cat(diffs))


def token_kl(policy: nn.Module, reference: Reference, batch: SeqBatch) -> Tensor:
    """Per sequence, ``sum_t KL(pi_theta(. | y_<t) || pi_ref(. | y_<t))`` over its completion
    positions ``[N]``: the Rao-Blackwellized form of ``log pi_theta(y) - log pi_ref(y)`` (by
    the chain rule, each drawn token's log ratio has that position's exact KL as its conditional
    mean, so both have the same expectation over ``y ~ pi_theta``; Amini et al. 2025, "Better
    Estimation of the KL Divergence Between Language Models", arXiv 2504.10637). Computed
    from both models' full next-token log-probs: ``sum_v p_v (log p_v - log q_v)``."""
    mine, rows = completion_log_probs(policy, batch)
    theirs, _ = reference.completion_log_probs(batch)
    per_token = torch.nn.functional.kl_div(theirs, mine, reduction="none", log_target=True).sum(-1)
    sums = torch.zeros(batch.input_ids.shape[0], device=per_token.device)
    return sums.index_add(0, rows, per_token)
