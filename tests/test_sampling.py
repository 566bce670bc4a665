import pytest
import torch
from draws import chi_square_pvalue

from gpo.models.sampling import Samples, cut_at_eos, encode_chat_prompts, sample
from gpo.models.tiny import tiny_model_and_tokenizer

PROMPTS = [
    "write one sentence about cats .",
    "hello",
    "tell me a fact about the big blue sea and the long river , please",
]


@pytest.fixture(scope="module")
def tiny():
    """The tiny model with an EOS bias (a random model rarely ends), ~9% per step."""
    model, tok = tiny_model_and_tokenizer(seed=0)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 2.5
    model.lm_head = head
    return model, tok


@pytest.fixture(scope="module")
def prompt_ids(tiny):
    return encode_chat_prompts(tiny[1], PROMPTS)


def test_chat_prompts_end_with_generation_prompt(tiny, prompt_ids):
    tok = tiny[1]
    assert tok.decode(prompt_ids[1]).endswith("<bos> assistant :")
    assert len({len(p) for p in prompt_ids}) == 3  # really different lengths: padding matters


def test_shapes_order_and_eos_cut(tiny, prompt_ids):
    model, tok = tiny
    s = sample(model, tok, prompt_ids, num_samples=4, max_new_tokens=12, batch_size=5, seed=1)
    assert isinstance(s, Samples) and len(s) == 12
    assert s.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
    assert s.sample_index == [0, 1, 2, 3] * 3
    eos = tok.eos_token_id
    for ids, fin, text in zip(s.completion_ids, s.finished, s.text, strict=True):
        if fin:
            assert ids[-1] == eos and eos not in ids[:-1]
        else:
            assert eos not in ids and len(ids) == 12
        assert 1 <= len(ids) <= 12
        assert text == tok.decode(ids, skip_special_tokens=True)
        assert "<eos>" not in text and "<pad>" not in text
    assert any(s.finished) and not all(s.finished)  # both cases exercised
    assert len(s.for_prompt(2)) == 4


def test_seeded_sampling_is_deterministic_and_leaves_global_rng(tiny, prompt_ids):
    model, tok = tiny
    state = torch.get_rng_state()
    a = sample(model, tok, prompt_ids, num_samples=3, max_new_tokens=8, seed=7)
    b = sample(model, tok, prompt_ids, num_samples=3, max_new_tokens=8, seed=7)
    c = sample(model, tok, prompt_ids, num_samples=3, max_new_tokens=8, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.completion_ids == b.completion_ids
    assert a.completion_ids != c.completion_ids
    # Samples of one prompt differ from each other (not one draw copied num_samples times).
    assert len({tuple(x) for x in a.completion_ids[:3]}) > 1


def test_left_padding_matches_one_at_a_time(tiny, prompt_ids):
    # Greedy decoding is deterministic, so a padded batch must reproduce unpadded single runs;
    # wrong padding side, a missing attention mask or bad position ids would change the argmax.
    model, tok = tiny_model_and_tokenizer(seed=3)  # no EOS bias: long greedy continuations
    batched = sample(model, tok, prompt_ids, max_new_tokens=10, temperature=0, batch_size=3)
    single = sample(model, tok, prompt_ids, max_new_tokens=10, temperature=0, batch_size=1)
    assert batched.completion_ids == single.completion_ids
    assert all(len(c) > 1 for c in batched.completion_ids)  # real continuations compared


def test_sampling_distribution_is_the_models(tiny):
    # temperature 1, top_p 1 must sample the full softmax (no hidden top-k): a chi-square test of
    # the first token's counts against the model's next-token probabilities. 20000 draws: over
    # 100+ bins the test then sees a shift of 2 points in one token's probability (EOS's 0.072
    # at temperature 0.9 is 0.091), which a max-abs frequency error below 0.03 let pass.
    model, tok = tiny
    ids = encode_chat_prompts(tok, ["hello"])
    with torch.no_grad():
        probs = model(torch.tensor(ids)).logits[0, -1].double().softmax(-1)
    s = sample(model, tok, ids, num_samples=20000, max_new_tokens=1, seed=0)
    counts = torch.bincount(torch.tensor([c[0] for c in s.completion_ids]), minlength=len(probs))
    p = chi_square_pvalue(counts, probs)
    assert p > 1e-3, p
    assert (counts > 0).sum() > 50  # far more than a top-k would allow with this vocabulary


def test_mode_restored_and_inputs_checked(tiny, prompt_ids):
    model, tok = tiny
    model.train()
    sample(model, tok, prompt_ids[:1], max_new_tokens=2, seed=0)
    assert model.training
    model.eval()
    sample(model, tok, prompt_ids[:1], max_new_tokens=2, seed=0)
    assert not model.training
    with pytest.raises(ValueError, match="empty prompt"):
        sample(model, tok, [[]], max_new_tokens=2)
    with pytest.raises(ValueError):
        sample(model, tok, prompt_ids, top_p=0.0)


def test_cut_at_eos():
    assert cut_at_eos([5, 6, 3, 7, 3], {3}) == ([5, 6, 3], True)
    assert cut_at_eos([5, 6], {3}) == ([5, 6], False)
    assert cut_at_eos([9, 5], {3, 9}) == ([9], True)
