"""gpo.eval.kl.on_policy_kl: the Monte Carlo KL(pi_theta || pi_ref) of sampled completions."""

from __future__ import annotations

import torch
from draws import exact_next_token_kl

from gpo.eval.kl import on_policy_kl
from gpo.models.loading import frozen_copy
from gpo.models.reference import Reference
from gpo.models.sampling import Samples
from gpo.models.tiny import tiny_model_and_tokenizer


def _prompts(tok) -> list[list[int]]:
    return [tok.encode(" ".join(["good"] * (1 + k % 4)) + " dog") for k in range(6)]


def _sharp_pair(seed_policy: int = 3, seed_ref: int = 4):
    policy, tok = tiny_model_and_tokenizer(seed=seed_policy)
    other, _ = tiny_model_and_tokenizer(seed=seed_ref)
    with torch.no_grad():  # a random tiny model is near uniform: sharpen it, so the KL is large
        policy.lm_head.weight.mul_(30.0)
    return policy, other, tok


def test_one_token_kl_matches_the_exact_sum_over_the_vocabulary():
    """With one new token the KL is a finite sum, sum_v p(v) log(p(v)/q(v)) per prompt, which
    the estimate (policy log-probs from the sampler) must match within its standard error."""
    policy, other, tok = _sharp_pair()
    ref = Reference(policy, frozen_copy(other))
    prompts = _prompts(tok)
    kl, se = on_policy_kl(policy, ref, tok, prompts, 200, 1, seed=0)
    truth = exact_next_token_kl(policy, other, prompts)
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


def test_token_estimator_is_the_exact_kl_for_one_new_token():
    """With one new token every completion of a prompt carries that prompt's exact next-token
    KL, so the token estimator has no sampling noise at all: its mean is the exact value."""
    policy, other, tok = _sharp_pair()
    prompts = _prompts(tok)
    kl, _ = on_policy_kl(policy, Reference(policy, frozen_copy(other)), tok, prompts, 3, 1, 0,
                         estimator="token")  # fmt: skip
    truth = exact_next_token_kl(policy, other, prompts)
    assert truth > 1.0
    assert abs(kl - truth) < 1e-4 * truth, (kl, truth)


def test_token_and_sample_estimators_agree_and_token_is_less_noisy():
    """Both are unbiased for the KL over completions of several tokens (the chain rule); on the
    same draws the token estimator's standard error is several times smaller."""
    policy, other, tok = _sharp_pair()
    ref = Reference(policy, frozen_copy(other))
    prompts = _prompts(tok)
    kl_s, se_s = on_policy_kl(policy, ref, tok, prompts, 64, 4, seed=2)
    kl_t, se_t = on_policy_kl(policy, ref, tok, prompts, 64, 4, seed=2, estimator="token")
    assert kl_t > 10 * se_t
    assert abs(kl_s - kl_t) < 4 * (se_s**2 + se_t**2) ** 0.5, (kl_s, se_s, kl_t, se_t)
    assert se_t < se_s / 2, (se_s, se_t)


def test_token_estimator_on_a_lora_policy_and_at_zero_kl(active_lora):
    base, tok = tiny_model_and_tokenizer(seed=3)
    same = on_policy_kl(base, Reference(base, frozen_copy(base)), tok, _prompts(tok), 2, 6, 0,
                        estimator="token")  # fmt: skip
    assert abs(same[0]) < 1e-5 and same[1] < 1e-5  # no noise either: every term is exactly 0
    policy = active_lora(base)
    kl_t, se_t = on_policy_kl(policy, Reference(policy), tok, _prompts(tok), 16, 6, 1,
                              estimator="token")  # fmt: skip
    kl_s, se_s = on_policy_kl(policy, Reference(policy), tok, _prompts(tok), 16, 6, 1)
    assert kl_t > 0
    assert abs(kl_s - kl_t) < 4 * (se_s**2 + se_t**2) ** 0.5


def test_the_config_offers_exactly_the_estimators_on_policy_kl_has():
    import typing

    from gpo.eval.kl import Estimator
    from gpo.train.config import TrainConfig

    hint = typing.get_type_hints(TrainConfig)["kl_estimator"]
    assert typing.get_args(hint) == typing.get_args(Estimator)
