"""gpo.eval.kl.on_policy_kl: the Monte Carlo KL(pi_theta || pi_ref) of sampled completions."""

from __future__ import annotations

import torch

from gpo.eval.kl import on_policy_kl
from gpo.models.loading import frozen_copy
from gpo.models.reference import Reference
from gpo.models.sampling import Samples
from gpo.models.tiny import tiny_model_and_tokenizer


def _prompts(tok) -> list[list[int]]:
    return [tok.encode(" ".join(["good"] * (1 + k % 4)) + " dog") for k in range(6)]


def test_one_token_kl_matches_the_exact_sum_over_the_vocabulary():
    """With one new token the KL is a finite sum, sum_v p(v) log(p(v)/q(v)) per prompt, which
    the estimate (policy log-probs from the sampler) must match within its standard error."""
    policy, tok = tiny_model_and_tokenizer(seed=3)
    other, _ = tiny_model_and_tokenizer(seed=4)
    with torch.no_grad():  # a random tiny model is near uniform: sharpen it, so the KL is large
        policy.lm_head.weight.mul_(30.0)
    ref = Reference(policy, frozen_copy(other))
    prompts = _prompts(tok)
    kl, se = on_policy_kl(policy, ref, tok, prompts, 200, 1, seed=0)
    exact = []
    with torch.no_grad():
        for p in prompts:
            x = torch.tensor([p])
            lp = torch.log_softmax(policy(input_ids=x).logits[0, -1].double(), -1)
            lq = torch.log_softmax(other(input_ids=x).logits[0, -1].double(), -1)
            exact.append((lp.exp() * (lp - lq)).sum().item())
    truth = sum(exact) / len(exact)
    assert truth > 20 * se  # a wrong estimate (e.g. 0) could not pass the check below
    assert abs(kl - truth) < 4 * se, (kl, se, truth)


def test_sampler_log_probs_give_the_same_kl_as_scoring_the_samples(active_lora, monkeypatch):
    base, tok = tiny_model_and_tokenizer(seed=3)
    policy = active_lora(base)
    ref = Reference(policy)
    prompts = _prompts(tok)
    fast = on_policy_kl(policy, ref, tok, prompts, 3, 8, seed=1)

    import gpo.eval.kl as kl_module

    real = kl_module.sample

    def without_logps(*args, **kwargs) -> Samples:
        out = real(*args, **kwargs)
        out.logps = None  # as when model.generate sampled
        return out

    monkeypatch.setattr(kl_module, "sample", without_logps)
    scored = on_policy_kl(policy, ref, tok, prompts, 3, 8, seed=1)
    assert fast[0] != 0
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(scored), atol=1e-4, rtol=1e-4)


def test_a_policy_equal_to_its_reference_has_zero_kl():
    model, tok = tiny_model_and_tokenizer(seed=3)
    kl, _ = on_policy_kl(model, Reference(model, frozen_copy(model)), tok, _prompts(tok), 2, 6, 0)
    assert abs(kl) < 1e-4
