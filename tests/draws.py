"""Shared by the sampling tests: do token draws follow a given distribution?"""

from __future__ import annotations

import torch
from scipy import stats


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square p-value of token ``counts`` [V] against ``probs`` [V].

    Tokens expected fewer than 5 times are pooled into one bin (the test's approximation needs
    about 5 per bin); a draw of a token with probability 0 gives p = 0.
    """
    counts, probs = counts.double(), probs.double() / probs.sum()
    if counts[probs == 0].sum() > 0:
        return 0.0
    n = counts.sum()
    expected = probs * n
    keep = expected >= 5
    observed, expected = counts[keep], expected[keep]
    rare = (probs > 0) & ~keep
    if rare.any():
        observed = torch.cat([observed, counts[rare].sum()[None]])
        expected = torch.cat([expected, probs[rare].sum()[None] * n])
    expected = expected * n / expected.sum()  # the same total as observed, as scipy requires
    return float(stats.chisquare(observed.numpy(), expected.numpy()).pvalue)


def exact_next_token_kl(policy, reference, prompts) -> float:
    """The mean over ``prompts`` (token id lists) of ``KL(policy || reference)`` of the next
    token, summed exactly over the vocabulary in float64: the on-policy KL of one-token
    completions, against which the Monte Carlo estimators are checked."""
    exact = []
    with torch.no_grad():
        for p in prompts:
            x = torch.tensor([list(p)])
            lp = torch.log_softmax(policy(input_ids=x).logits[0, -1].double(), -1)
            lq = torch.log_softmax(reference(input_ids=x).logits[0, -1].double(), -1)
            exact.append((lp.exp() * (lp - lq)).sum().item())
    return sum(exact) / len(exact)
