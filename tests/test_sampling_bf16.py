"""Sampling a LoRA policy whose base weights are bf16 (``--dtype bfloat16``): the sampler must
measure the policy itself, not a copy with ``W + dW`` rounded into bf16 weights."""

from __future__ import annotations

import copy

import torch

import gpo.eval.kl as kl_module
from gpo.data.collate import collate_sequences
from gpo.eval.kl import on_policy_kl
from gpo.models.loading import add_lora
from gpo.models.logps import sequence_logps
from gpo.models.reference import Reference
from gpo.models.sampling import Samples, sample
from gpo.models.tiny import tiny_model_and_tokenizer
from gpo.stats import mean_se


def _half_ulp(w: torch.Tensor) -> torch.Tensor:
    """Half the spacing of bf16 numbers (8 significant bits) at each entry of ``w``."""
    return 2.0 ** (torch.floor(torch.log2(w.abs().float())) - 8)


def _bf16_policy_with_a_sub_ulp_update():
    """A bf16 tiny model with LoRA adapters whose update ``dW`` is below half a bf16 step of
    every weight it touches (merged into bf16, it rounds away entirely), yet changes the policy:
    it is aligned with the layers' mean input, as training's updates are, and the model's
    activations share a dominant direction, as real LMs' do."""
    base, tok = tiny_model_and_tokenizer(seed=3, hidden=64)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        shared = torch.randn(64, generator=g)
        base.model.embed_tokens.weight.add_(shared * (0.5 / shared.norm()))
        for name, p in base.named_parameters():  # no entry near 0, where bf16 steps are fine
            if p.dim() == 2 and "embed" not in name and "lm_head" not in name:
                p.copy_(p.sign() * (p.abs() + 0.1))
    policy = add_lora(base.to(torch.bfloat16), 4, 8, 0.0, "all-linear")
    prompts = [tok.encode(" ".join(["good"] * (1 + k % 4)) + " dog") for k in range(6)]
    layers = [m for m in policy.modules() if "default" in getattr(m, "lora_B", {})]
    inputs: dict[torch.nn.Module, torch.Tensor] = {}

    def keep_input(module, args, _out):
        inputs[module] = args[0].float().flatten(0, -2).mean(0)

    hooks = [m.register_forward_hook(keep_input) for m in layers]
    with torch.no_grad():
        policy(input_ids=torch.tensor([prompts[-1]]))
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for m in layers:
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
            a.zero_()
            a[0] = inputs[m].sign()
            b.zero_()  # row i of dW: +-0.9 half-steps of the row's smallest entry
            b[:, 0] = torch.randn(b.shape[0], generator=g).sign() * 0.9
            b[:, 0] *= _half_ulp(m.base_layer.weight).min(1).values / m.scaling["default"]
    return policy.eval(), tok, prompts


def _full_precision(policy, prompts, samples: Samples) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log pi_theta, log pi_theta - log pi_ref)`` of each sample, scored by a float32 copy of
    the policy (bf16 base weights are exact in float32; the adapters are float32 already)."""
    fp32 = copy.deepcopy(policy).float()
    pairs = zip(samples.prompt_index, samples.completion_ids, strict=True)
    batch = collate_sequences([(list(prompts[i]), ids) for i, ids in pairs], 0)
    with torch.no_grad():
        mine = sequence_logps(fp32, batch).logps.double()
        with fp32.disable_adapter():
            ref = sequence_logps(fp32, batch).logps.double()
    return mine, mine - ref


def test_bf16_lora_kl_estimate_agrees_with_full_precision_scoring(monkeypatch):
    """Mean and standard error of ``on_policy_kl`` against a float32 scoring of its own samples.
    The update's KL is second order (about 0 here) but each sample's log-ratio is first order,
    which the standard error sees: a sampler that merged ``dW`` into bf16 weights samples pi_ref
    and reports 0 +- 0."""
    policy, tok, prompts = _bf16_policy_with_a_sub_ulp_update()
    seen: list[Samples] = []

    def keep(*args, **kwargs) -> Samples:
        seen.append(sample(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(kl_module, "sample", keep)
    kl, se = on_policy_kl(policy, Reference(policy), tok, prompts, 16, 8, seed=0)
    (samples,) = seen
    assert all(samples.completion_ids)  # every sample is in the estimate
    kl32, se32 = mean_se(_full_precision(policy, prompts, samples)[1])
    assert abs(kl - kl32) < 2 * se32, (kl, kl32, se32)
    assert abs(se / se32 - 1) < 0.2, (se, se32)  # measured 0.97-1.03; a rounded copy: 0


def test_bf16_lora_sampler_log_probs_are_the_policys():
    """Per sample, the sampler's log pi_theta against a float32 scoring: its error (bf16 noise,
    rms 0.2-0.3 of the update's size over seeds) is well below the update's own size, which is
    the error of a rounded copy (it gives pi_ref's log-probs)."""
    policy, tok, prompts = _bf16_policy_with_a_sub_ulp_update()
    out = sample(policy, tok, prompts, 16, 8, seed=1)
    assert out.logps is not None  # gpo's decode loop sampled (its self-check passed in bf16)
    mine, update = _full_precision(policy, prompts, out)
    error = torch.tensor(out.logps, dtype=torch.double) - mine
    assert error.pow(2).mean().sqrt() < 0.5 * update.pow(2).mean().sqrt()
