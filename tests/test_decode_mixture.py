"""IPO-MD's sampling policy in gpo's decode loop: tokens drawn from the normalized geometric
mixture pi_theta^(1 - alpha) * pi_ref^alpha, checked against the product computed by brute force
(full forward passes of both models, no cache)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import pytest
import torch
from draws import chi_square_pvalue

from gpo.models.decode import Mixture, decode, decode_with_logps
from gpo.models.sampling import pad_id, sample
from gpo.models.tiny import tiny_model_and_tokenizer


@pytest.fixture(scope="module")
def pair():
    policy, tok = tiny_model_and_tokenizer(seed=3)
    ref, _ = tiny_model_and_tokenizer(seed=4)  # another network: the mixture is not either one
    with torch.no_grad():  # a peaked pi_ref (random tiny models are near uniform): the
        ref.get_output_embeddings().weight.mul_(30)  # mixture then differs from the policy
    policy.eval(), ref.eval()
    prompts = [tok.encode(" ".join(["good"] * (1 + k % 5)) + " dog") for k in range(12)]
    return policy, ref, tok, prompts


def _frozen(model):
    return lambda: nullcontext(model)


def _mixture_probs(policy, ref, ids: list[int], alpha: float) -> torch.Tensor:
    """softmax((1 - a) log pi_theta + a log pi_ref) of the next token after ``ids`` (float64);
    ``ref``: a network, or a function entering a context that yields one."""
    enter = ref if callable(ref) and not isinstance(ref, torch.nn.Module) else _frozen(ref)
    with torch.no_grad():
        x = torch.tensor([ids])
        lp = policy(input_ids=x).logits[0, -1].double().log_softmax(-1)
        with enter() as net:
            lr = net(input_ids=x).logits[0, -1].double().log_softmax(-1)
    return torch.softmax((1 - alpha) * lp + alpha * lr, -1)


def test_draws_follow_the_normalized_product_past_the_prefill(pair):
    """6000 two-token draws from one prompt (one prefill, its cache rows repeated 6000 times):
    the first token against the brute-force product, and the second token against its marginal
    sum_f P(f) P(t | f) under the product (pi_ref's cache must follow the policy's)."""
    policy, ref, _, prompts = pair
    mix = Mixture(_frozen(ref), 0.5)
    g = torch.Generator().manual_seed(0)
    out = decode(policy, [prompts[0]], 6000, 2, set(), 0, 1.0, 1.0, g, mixture=mix)
    first = torch.tensor([ids[0] for ids in out])
    probs = _mixture_probs(policy, ref, prompts[0], 0.5)
    assert chi_square_pvalue(torch.bincount(first, minlength=len(probs)), probs) > 1e-3
    marginal = sum(
        probs[f] * _mixture_probs(policy, ref, [*prompts[0], f], 0.5) for f in range(len(probs))
    )
    second = torch.tensor([ids[1] for ids in out])
    assert chi_square_pvalue(torch.bincount(second, minlength=len(probs)), marginal) > 1e-3
    # the mixture is neither model: the policy's own first-token law is rejected
    own = _mixture_probs(policy, ref, prompts[0], 0.0)
    assert chi_square_pvalue(torch.bincount(first, minlength=len(own)), own) < 1e-6


def _greedy_brute(policy, ref, prompt: list[int], steps: int, alpha: float, eos: set[int]):
    ids: list[int] = []
    for _ in range(steps):
        nxt = int(_mixture_probs(policy, ref, [*prompt, *ids], alpha).argmax())
        ids.append(nxt)
        if nxt in eos:
            break
    return ids


def test_greedy_mixture_equals_brute_force_with_rows_ending_early(pair):
    """Greedy over 12 prompts of several lengths (left padding), with EOS tokens chosen so that
    rows end early and the batch (both caches) is compacted on the way."""
    policy, ref, tok, prompts = pair
    pad = pad_id(policy, tok)
    mix = Mixture(_frozen(ref), 0.3)
    plain = decode(policy, prompts, 1, 8, set(), pad, temperature=0, mixture=mix)
    eos = {tok.eos_token_id, plain[0][-2]}  # some rows draw it one token before the end
    ours, logps = decode_with_logps(policy, prompts, 1, 8, eos, pad, 0.0, mixture=mix)
    assert ours == [_greedy_brute(policy, ref, p, 8, 0.3, eos) for p in prompts]
    assert any(len(ids) < 8 for ids in ours) and any(len(ids) == 8 for ids in ours)
    # the log-probs stay the policy's own (a KL estimate needs them)
    for p, ids, lp in zip(prompts, ours, logps, strict=True):
        with torch.no_grad():
            logits = policy(input_ids=torch.tensor([[*p, *ids]])).logits[0].log_softmax(-1)
        own = sum(float(logits[len(p) - 1 + k, t]) for k, t in enumerate(ids))
        assert abs(own - lp) < 1e-4


def test_lora_policy_with_its_adapters_off_as_the_reference(pair, active_lora):
    """The main job's setting: pi_ref is the LoRA policy with its adapters off, entered at every
    forward call (sample() decodes the policy through a merged copy). Greedy tokens equal the
    brute-force product's; the adapters are on again and the weights untouched afterwards."""
    _, _, tok, prompts = pair
    base, _ = tiny_model_and_tokenizer(seed=3)
    lora = active_lora(base)
    before = {k: v.clone() for k, v in lora.state_dict().items()}

    @contextmanager
    def adapters_off():
        with lora.disable_adapter():
            yield lora

    out = sample(lora, tok, prompts, 1, 6, temperature=0, mixture=Mixture(adapters_off, 0.5))
    lora.eval()
    expected = [_greedy_brute(lora, adapters_off, p, 6, 0.5, set()) for p in prompts]
    assert [ids[:6] for ids in out.completion_ids] == [e[:6] for e in expected]
    assert all(torch.equal(before[k], v) for k, v in lora.state_dict().items())
    assert out.completion_ids != sample(lora, tok, prompts, 1, 6, temperature=0).completion_ids


def test_alpha_must_be_in_zero_one():
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\)"):
        Mixture(lambda: nullcontext(None), 1.0)


def test_a_model_the_loop_cannot_drive_is_refused_for_a_mixture(pair, monkeypatch):
    """model.generate cannot draw from the mixture: no silent fallback to the policy alone."""
    policy, ref, tok, prompts = pair
    monkeypatch.setattr("gpo.models.sampling.fast_decode_ok", lambda *a, **k: False)
    with pytest.raises(ValueError, match="needs gpo's decode loop"):
        sample(policy, tok, prompts[:2], 1, 4, seed=0, mixture=Mixture(_frozen(ref), 0.5))
