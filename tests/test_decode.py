"""gpo's decode loop (gpo.models.decode) against model.generate and against the model's own
next-token distribution."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from draws import chi_square_pvalue
from scipy import stats

from gpo.models.decode import decode, decode_with_logps, pick_tokens
from gpo.models.sampling import _generate, cut_at_eos, eos_ids, fast_decode_ok, pad_id, sample
from gpo.models.tiny import tiny_model_and_tokenizer


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model_and_tokenizer(seed=3)
    model.eval()
    prompts = [tok.encode(" ".join(["good"] * (1 + k % 5)) + " dog") for k in range(12)]
    return model, tok, prompts


def test_greedy_tokens_equal_generate_including_finished_rows(tiny):
    """Greedy decoding is deterministic, so both loops must give the same tokens; with EOS as a
    likely token many rows finish early and the batch is compacted on the way."""
    model, tok, prompts = tiny
    pad = pad_id(model, tok)
    plain = decode(model, prompts, 1, 10, set(), pad, temperature=0)
    eos = {tok.eos_token_id, *(ids[3] for ids in plain[:6])}  # half the rows end at step 4
    ours = decode(model, prompts, 1, 10, eos, pad, temperature=0)
    kwargs = {"max_new_tokens": 10, "do_sample": False, "pad_token_id": pad}
    theirs = _generate(model, prompts, 1, {**kwargs, "eos_token_id": sorted(eos)}, pad, None)
    assert ours == [cut_at_eos(ids, eos)[0] for ids in theirs]
    assert any(len(ids) < 10 for ids in ours), "no row finished early: compaction untested"
    shared = decode(model, prompts[:3], 4, 10, eos, pad, temperature=0)  # one prefill, 4 rows
    assert shared == [ids for ids in ours[:3] for _ in range(4)]


def _first_token_probs(model, prompt: list[int], temperature: float) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].double()
    return torch.softmax(logits / temperature, -1)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_draws_follow_the_models_distribution(tiny, temperature):
    """Chi-square of 6000 first tokens against softmax(logits / T) of the model itself."""
    model, _, prompts = tiny
    probs = _first_token_probs(model, prompts[0], temperature)
    g = torch.Generator().manual_seed(0)
    out = decode(model, [prompts[0]], 6000, 1, set(), 0, temperature, 1.0, g)
    counts = torch.bincount(torch.tensor([ids[0] for ids in out]), minlength=len(probs))
    p = chi_square_pvalue(counts, probs)
    assert p > 1e-3, p


def test_top_p_keeps_the_nucleus_as_transformers_defines_it():
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * 3
    warped = TopPLogitsWarper(0.7)(None, logits.clone())
    expected = torch.softmax(warped, -1)
    g = torch.Generator().manual_seed(2)
    draws = torch.stack([pick_tokens(logits, 1.0, 0.7, g) for _ in range(4000)])
    for row in range(4):  # a draw outside the nucleus gives p = 0
        p = chi_square_pvalue(torch.bincount(draws[:, row], minlength=50), expected[row])
        assert p > 1e-3, (row, p)


@pytest.mark.parametrize("u", [0.0, 1.0])
def test_no_token_of_probability_zero_at_either_end_of_the_uniform_draw(monkeypatch, u):
    """rand's lowest value, 0, and the total that ``rand * total`` can round up to (1.0 here):
    neither may pick a token that has probability 0, whether a -inf logit or cut by top-p."""
    inf = float("inf")
    masked = torch.tensor([[-inf, 0.0, 0.5, -inf], [-inf, -inf, 1.0, -inf]])
    cut = torch.tensor([[0.0, 4.0, 1.0, 0.0], [-2.0, 3.0, 3.0, -2.0]])  # top-p 0.6 cuts 0 and 3
    monkeypatch.setattr(torch, "rand", lambda *shape, **_: torch.full(shape, u))
    assert torch.isin(pick_tokens(masked, 1.0, 1.0, None), torch.tensor([1, 2])).all()
    assert torch.isin(pick_tokens(cut, 1.0, 0.6, None), torch.tensor([1, 2])).all()


def test_samples_have_generates_distribution_of_sequence_logprobs(tiny):
    """Two-sample KS test: the log-probabilities of whole sampled completions under the model
    are distributed alike for gpo's loop and for model.generate (same seed count, 400 each)."""
    model, tok, prompts = tiny
    eos, pad = eos_ids(model, tok), pad_id(model, tok)
    prompt = prompts[1]
    g = torch.Generator().manual_seed(5)
    ours = decode(model, [prompt], 400, 6, eos, pad, 1.0, 1.0, g)
    kwargs = {"max_new_tokens": 6, "do_sample": True, "top_k": 0, "pad_token_id": pad}
    theirs = _generate(model, [prompt], 400, {**kwargs, "eos_token_id": sorted(eos)}, pad, 7)
    theirs = [cut_at_eos(ids, eos)[0] for ids in theirs]

    def logp(ids: list[int]) -> float:
        x = torch.tensor([prompt + ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
        return sum(lp[len(prompt) - 1 + k, t].item() for k, t in enumerate(ids))

    a, b = [logp(ids) for ids in ours], [logp(ids) for ids in theirs]
    assert all(math.isfinite(v) for v in a + b)
    assert stats.ks_2samp(a, b).pvalue > 1e-3


def test_a_model_the_loop_cannot_drive_falls_back_to_generate(tiny, monkeypatch):
    model, tok, prompts = tiny
    model2, _ = tiny_model_and_tokenizer(seed=3)
    forward = model2.forward

    from transformers import StaticCache

    def no_static_cache(*args, **kwargs):  # as a model whose attention cannot use it
        if any(isinstance(kwargs.get(k), StaticCache) for k in ("cache", "past_key_values")):
            raise TypeError("this model does not support a static cache")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model2, "forward", no_static_cache)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = sample(model2, tok, prompts[:3], 2, 5, temperature=0, seed=0)
    assert any("model.generate instead" in str(w.message) for w in seen)
    greedy = sample(model, tok, prompts[:3], 2, 5, temperature=0, seed=0)
    assert out.completion_ids == greedy.completion_ids


def test_the_decode_loop_drives_the_installed_transformers(tiny):
    """On every transformers version the package allows (CI runs this file on the oldest too),
    gpo's loop passes its self-check: its cache goes in under the name the model's forward
    takes (``cache`` from 5.2x, ``past_key_values`` before), so sampling keeps the fast path."""
    _, tok, prompts = tiny
    fresh, _ = tiny_model_and_tokenizer(seed=3)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert fast_decode_ok(fresh, prompts, eos_ids(fresh, tok), pad_id(fresh, tok))
        out = sample(fresh, tok, prompts, 2, 6, seed=0)
    assert out.logps is not None
    assert not any("model.generate instead" in str(w.message) for w in seen)


def _spied(model, calls: list[int]):
    """``model`` whose forward records the number of rows of every call."""
    forward = model.forward

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    model.forward = counting
    return model


def test_self_check_runs_the_cache_row_repeat_and_the_compaction(tiny):
    """The check must drive the loop as sampling does: 3 prompts, each prompt's cache rows
    repeated (6 rows), then fewer rows once one prompt's rows have ended (compaction)."""
    _, tok, prompts = tiny
    calls: list[int] = []
    spied = _spied(tiny_model_and_tokenizer(seed=3)[0], calls)
    by_length = prompts[:5]  # lengths 2 to 6, sorted as sample() passes them
    assert fast_decode_ok(spied, by_length, eos_ids(spied, tok), pad_id(spied, tok))
    assert max(calls) == 6, calls  # 3 prompts x 2 rows from one prefill each
    assert any(3 < n < 6 for n in calls), calls  # compacted to the rows still running


def test_a_model_whose_rows_the_loop_puts_out_of_step_falls_back_to_generate(tiny):
    """A model with per-row state beside its KV cache (as recurrent layers keep): the loop's
    cache-row repeat puts that state out of step with the rows. Its greedy tokens would be
    silently wrong; the self-check must see that and sample with ``generate``."""
    _, tok, prompts = tiny
    model2, _ = tiny_model_and_tokenizer(seed=3)
    forward, vocab, state = model2.forward, model2.config.vocab_size, {}

    def with_row_state(*args, **kwargs):
        out = forward(*args, **kwargs)
        rows = kwargs["input_ids"].shape[0]
        if kwargs["input_ids"].shape[1] > 1:  # a prompt pass: each row's state, kept in order
            length = kwargs["attention_mask"].sum(1)
            state["bias"] = torch.nn.functional.one_hot(10 + length, vocab) * 10.0
        out.logits = out.logits + state["bias"][torch.arange(rows) % len(state["bias"])][:, None]
        return out

    model2.forward = with_row_state
    pad, eos = pad_id(model2, tok), eos_ids(model2, tok)
    greedy = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": pad}
    expected = _generate(model2, prompts[:3], 2, {**greedy, "eos_token_id": sorted(eos)}, pad, 0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = sample(model2, tok, prompts[:3], 2, 5, temperature=0)
    assert out.completion_ids == [cut_at_eos(ids, eos)[0] for ids in expected]
    assert any("model.generate instead" in str(w.message) for w in seen)


#: ``generation_config.json`` settings that change what ``generate`` draws: none may reach the
#: fallback's samples or the self-check's reference tokens.
FOREIGN_SETTINGS = {
    "repetition_penalty": 5.0,
    "no_repeat_ngram_size": 1,
    "min_new_tokens": 8,
    "min_p": 0.5,
    "typical_p": 0.3,
    "top_k": 3,
    "temperature": 0.3,
}


def test_generate_ignores_the_models_generation_config(tiny, monkeypatch):
    """Greedy: the model's own settings (and a suppressed token) change nothing, in the
    self-check or the fallback; sampled: the fallback's first tokens are softmax(logits)."""
    model, tok, prompts = tiny
    foreign, _ = tiny_model_and_tokenizer(seed=3)  # model's weights, its own generation config
    plain = sample(model, tok, prompts, 2, 8, temperature=0)
    foreign.generation_config.update(
        **FOREIGN_SETTINGS, suppress_tokens=[plain.completion_ids[0][0]]
    )
    kept = sample(foreign, tok, prompts, 2, 8, temperature=0)
    assert kept.logps is not None  # the self-check passed: gpo's loop sampled
    monkeypatch.setattr("gpo.models.sampling.fast_decode_ok", lambda *a, **k: False)
    fallback = sample(foreign, tok, prompts, 2, 8, temperature=0)
    assert fallback.completion_ids == kept.completion_ids == plain.completion_ids
    out = sample(foreign, tok, [prompts[0]], 3000, 1, batch_size=3000, seed=0)
    counts = torch.bincount(torch.tensor([ids[0] for ids in out.completion_ids]))
    probs = _first_token_probs(model, prompts[0], 1.0)
    p = chi_square_pvalue(torch.cat([counts, counts.new_zeros(len(probs) - len(counts))]), probs)
    assert p > 1e-3, p
    assert foreign.generation_config.repetition_penalty == 5.0  # the model's config is restored


def test_lora_policy_is_sampled_through_a_merged_copy_and_left_untouched(tiny, active_lora):
    """Active adapters: the merged copy gives the unmerged model's greedy tokens; the trained
    model's weights are bitwise unchanged; adapters off (pi_ref) samples the base model."""
    model, tok, prompts = tiny
    base, _ = tiny_model_and_tokenizer(seed=3)
    lora = active_lora(base)
    before = {k: v.clone() for k, v in lora.state_dict().items()}
    eos, pad = eos_ids(lora, tok), pad_id(lora, tok)
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": pad}
    with torch.inference_mode():
        theirs = _generate(lora, prompts, 1, {**kwargs, "eos_token_id": sorted(eos)}, pad, None)
    ours = sample(lora, tok, prompts, 1, 8, temperature=0)
    assert ours.completion_ids == [cut_at_eos(ids, eos)[0] for ids in theirs]
    assert all(torch.equal(before[k], v) for k, v in lora.state_dict().items())
    with lora.disable_adapter():
        off = sample(lora, tok, prompts, 1, 8, temperature=0)
    assert off.completion_ids == sample(model, tok, prompts, 1, 8, temperature=0).completion_ids
    assert ours.completion_ids != off.completion_ids  # the adapters do change the policy


def _scored(model, prompts, samples) -> torch.Tensor:
    """The completions' log-probs by the training scorer (a separate, full forward pass)."""
    from gpo.data.collate import collate_sequences
    from gpo.models.logps import sequence_logps

    pairs = zip(samples.prompt_index, samples.completion_ids, strict=True)
    seqs = [(list(prompts[i]), ids) for i, ids in pairs]
    with torch.no_grad():
        return sequence_logps(model, collate_sequences(seqs, 0)).logps


def test_sampler_log_probs_equal_a_separate_scoring_pass(tiny):
    """Per completion, EOS included, rows finishing early and batch compaction on the way, a
    prompt sampled 3 times from one prefill, and at a temperature (the log-prob stays the
    model's own, untempered)."""
    model, tok, prompts = tiny
    pad = pad_id(model, tok)
    plain = decode(model, prompts, 1, 8, set(), pad, temperature=0)
    eos = {tok.eos_token_id, *(ids[2] for ids in plain[:6])}
    g = torch.Generator().manual_seed(1)
    ids, logps = decode_with_logps(model, prompts, 3, 8, eos, pad, 1.0, 1.0, g)
    assert any(len(x) < 8 for x in ids) and any(len(x) == 8 for x in ids)
    assert len(logps) == len(ids) and all(v < 0 for v in logps)
    before = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = sorted(eos)
    try:
        for temperature in (1.0, 0.7):
            out = sample(model, tok, prompts, 3, 8, temperature=temperature, seed=2)
            assert any(out.finished) and not all(out.finished)
            assert out.logps is not None
            torch.testing.assert_close(torch.tensor(out.logps), _scored(model, prompts, out))
    finally:
        model.generation_config.eos_token_id = before


def test_lora_sampler_log_probs_are_the_unmerged_policys(tiny, active_lora):
    _, tok, prompts = tiny
    base, _ = tiny_model_and_tokenizer(seed=3)
    lora = active_lora(base)
    out = sample(lora, tok, prompts, 2, 8, seed=0)
    lora.eval()
    torch.testing.assert_close(torch.tensor(out.logps), _scored(lora, prompts, out))


def test_no_log_probs_when_generate_samples(tiny, monkeypatch):
    model, tok, prompts = tiny
    monkeypatch.setattr("gpo.models.sampling.fast_decode_ok", lambda *a, **k: False)
    assert sample(model, tok, prompts[:2], 1, 4, seed=0).logps is None
