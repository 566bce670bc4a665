"""Prefix sharing (prompt run once for both responses) against the plain path."""

import dataclasses
import warnings

import pytest
import torch

from gpo.data import Limits, parse_rows, tokenize_rows
from gpo.data.collate import (
    PairBatch,
    SharedPromptBatch,
    collate_for_training,
    collate_pairs,
    collate_shared,
)
from gpo.models.logps import batch_logps, sequence_logps
from gpo.models.reference import Reference
from gpo.models.tiny import tiny_model_and_tokenizer

ROWS = [
    {"prompt": "the cat", "chosen": " runs fast", "rejected": " is a very slow cat"},
    {
        "prompt": "tell me a short fact about the sun and the moon and the sea",
        "chosen": " yes",
        "rejected": " no thanks",
    },
    {"prompt": "hello", "chosen": " the dog eats bread and tea", "rejected": " tea"},
    {"prompt": "a b c d", "chosen": " e", "rejected": " f g h i j k"},
]


def _pairs(tokenizer, rows=ROWS):
    pairs, _ = tokenize_rows(parse_rows(rows, "mem"), tokenizer, Limits(max_length=64), "mem")
    assert len({len(p.prompt_ids) for p in pairs}) > 1  # prompts of different lengths
    return pairs


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(model, batch, reduction="sum"):
    model.zero_grad()
    out = batch_logps(model, batch, reduction)
    # Weights differ per row so that a row swap in the shared path would show in the gradients.
    (out.logps * torch.arange(1.0, out.logps.numel() + 1)).sum().backward()
    return out, _grads(model)


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_shared_prompt_equals_plain_values_and_gradients(active_lora, lora, reduction):
    model, tokenizer = tiny_model_and_tokenizer(seed=11)
    if lora:
        model = active_lora(model)
    pairs = _pairs(tokenizer)
    plain, g_plain = _run(model, collate_pairs(pairs, tokenizer.pad_token_id), reduction)
    shared_batch = collate_shared(pairs, tokenizer.pad_token_id)
    shared, g_shared = _run(model, shared_batch, reduction)
    assert model._gpo_shared_prompt_ok is True  # the shared path really ran
    torch.testing.assert_close(shared.logps, plain.logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared.logits_sum, plain.logits_sum, rtol=1e-5, atol=1e-5)
    assert shared.tokens.tolist() == plain.tokens.tolist()
    assert g_plain.keys() == g_shared.keys() and g_plain
    if lora:
        assert all("lora" in n for n in g_plain)
    for name in g_plain:
        torch.testing.assert_close(g_shared[name], g_plain[name], rtol=1e-4, atol=1e-6)


def test_reference_with_adapters_off_uses_the_shared_path_too(active_lora):
    model, tokenizer = tiny_model_and_tokenizer(seed=12)
    model = active_lora(model)
    pairs = _pairs(tokenizer)
    ref = Reference(model)
    shared = ref.logps(collate_shared(pairs, tokenizer.pad_token_id)).logps
    plain = ref.logps(collate_pairs(pairs, tokenizer.pad_token_id)).logps
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # adapters on gives different numbers: the reference really is pi_ref
        policy = batch_logps(model, collate_shared(pairs, tokenizer.pad_token_id)).logps
    assert (policy - shared).abs().max() > 1e-3


def test_the_prompt_is_attended_to():
    """Same responses after a different prompt: different log-probs (the cache is really used)."""
    model, tokenizer = tiny_model_and_tokenizer(seed=13)
    rows = [dict(r) for r in ROWS]
    a = _pairs(tokenizer, rows)
    for r in rows:
        r["prompt"] = "the moon " + r["prompt"]
    b = _pairs(tokenizer, rows)
    with torch.no_grad():
        la = batch_logps(model, collate_shared(a, tokenizer.pad_token_id)).logps
        lb = batch_logps(model, collate_shared(b, tokenizer.pad_token_id)).logps
    assert (la - lb).abs().min() > 1e-4


def test_empty_prompts_use_the_plain_layout():
    _, tokenizer = tiny_model_and_tokenizer(seed=14)
    pairs = _pairs(tokenizer)
    assert isinstance(collate_for_training(pairs, 0, share_prompt=True), SharedPromptBatch)
    assert isinstance(collate_for_training(pairs, 0, share_prompt=False), PairBatch)
    pairs[0] = dataclasses.replace(pairs[0], prompt_ids=[])
    assert isinstance(collate_for_training(pairs, 0, share_prompt=True), PairBatch)
    with pytest.raises(ValueError, match="non-empty prompt"):
        collate_shared(pairs, 0)


def test_unshared_view_holds_the_same_sequences():
    _, tokenizer = tiny_model_and_tokenizer(seed=15)
    pairs = _pairs(tokenizer)
    pad = tokenizer.pad_token_id
    got = collate_shared(pairs, pad).unshared()
    want = collate_pairs(pairs, pad)
    for field in ("attention_mask", "position_ids", "completion_mask", "indices"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    real = want.attention_mask.bool()
    assert torch.equal(got.input_ids[real], want.input_ids[real])


def test_models_without_a_usable_cache_fall_back_with_a_warning():
    model, tokenizer = tiny_model_and_tokenizer(seed=16)
    decoder = model.get_decoder()
    forward = decoder.forward

    def no_cache(*args, **kwargs):  # a decoder that ignores the cache it is given
        kwargs.pop("cache", None)
        kwargs.pop("past_key_values", None)
        return forward(*args, **kwargs)

    decoder.forward = no_cache
    pairs = _pairs(tokenizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            got = batch_logps(model, collate_shared(pairs, tokenizer.pad_token_id)).logps
            want = sequence_logps(model, collate_pairs(pairs, tokenizer.pad_token_id)).logps
    assert model._gpo_shared_prompt_ok is False
    assert any("prefix sharing" in str(w.message) for w in caught)
    torch.testing.assert_close(got, want)


def test_training_with_and_without_prefix_sharing_gives_the_same_curve(tiny_config, tmp_path):
    from gpo.train.tracking import read_metrics
    from gpo.train.trainer import train

    curves = {}
    for share in (True, False):
        name = f"share-{share}"
        # ref_cache none: both runs compute pi_ref themselves
        train(tiny_config(name, max_steps=8, eval_steps=8, share_prompt=share, ref_cache="none"))
        metrics = read_metrics(tmp_path / name)
        curves[share] = [(r["loss"], r["rewards/margins"]) for r in metrics if "loss" in r]
        curves[share] += [(r["eval/loss"], 0.0) for r in metrics if "eval/loss" in r]
    assert len(curves[True]) == 9
    torch.testing.assert_close(
        torch.tensor(curves[True]), torch.tensor(curves[False]), rtol=1e-4, atol=1e-5
    )
    assert curves[True][-2][0] < curves[True][0][0]  # it trained
