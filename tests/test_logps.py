import pytest
import torch

from gpo.data import Limits, collate_pairs, parse_rows, tokenize_rows
from gpo.models.logps import sequence_logps
from gpo.models.tiny import tiny_model_and_tokenizer


def _pairs(tokenizer):
    rows = [
        {"prompt": "the cat", "chosen": " runs fast", "rejected": " is a very slow cat"},
        {
            "prompt": "tell me a short fact about the sun and the moon",
            "chosen": " yes",
            "rejected": " no thanks",
        },
        {"prompt": "hello", "chosen": " the dog eats bread", "rejected": " tea"},
    ]
    pairs, _ = tokenize_rows(parse_rows(rows, "mem"), tokenizer, Limits(max_length=64), "mem")
    return pairs


def _by_hand(model, pairs):
    """Each sequence alone, unpadded: sum of log-softmax at completion targets."""
    out = []
    for completion_of in ("chosen_ids", "rejected_ids"):
        for p in pairs:
            completion = getattr(p, completion_of)
            ids = torch.tensor([p.prompt_ids + completion])
            logp = model(input_ids=ids).logits[0].log_softmax(-1)
            n = len(p.prompt_ids)
            out.append(sum(logp[n - 1 + t, tok].item() for t, tok in enumerate(completion)))
    return torch.tensor(out)


def test_sum_matches_unpadded_by_hand_and_padding_is_ignored():
    model, tokenizer = tiny_model_and_tokenizer(seed=1)
    model.eval()
    pairs = _pairs(tokenizer)
    expected = _by_hand(model, pairs)
    with torch.no_grad():
        for side in ("right", "left"):
            for pad in (tokenizer.pad_token_id, 7):  # the pad id's value must not matter
                batch = collate_pairs(pairs, pad, side)
                got = sequence_logps(model, batch)
                torch.testing.assert_close(got.logps, expected, atol=1e-5, rtol=1e-5)
                n_tokens = [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]
                assert got.tokens.tolist() == n_tokens


def test_prompt_tokens_do_not_contribute():
    """Changing the model's predictions at prompt positions leaves the logps unchanged."""
    model, tokenizer = tiny_model_and_tokenizer(seed=2)
    model.eval()
    pairs = _pairs(tokenizer)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    base = sequence_logps(model, batch).logps

    class Perturbed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, **kw):
            out = self.inner(**kw)
            targets_prompt = ~batch.completion_mask[:, 1:].bool()
            noise = torch.zeros_like(out.logits)
            noise[:, :-1][targets_prompt] = 100.0 * torch.randn_like(noise[:, :-1][targets_prompt])
            out.logits = out.logits + noise
            return out

    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(Perturbed(), batch).logps, base)


def test_mean_reduction_is_sum_over_tokens():
    model, tokenizer = tiny_model_and_tokenizer(seed=3)
    batch = collate_pairs(_pairs(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        s = sequence_logps(model, batch, "sum")
        m = sequence_logps(model, batch, "mean")
    torch.testing.assert_close(m.logps, s.logps / s.tokens)


def test_gradients_flow_only_through_completion_logits():
    model, tokenizer = tiny_model_and_tokenizer(seed=4)
    batch = collate_pairs(_pairs(tokenizer), tokenizer.pad_token_id)
    sequence_logps(model, batch).logps.sum().backward()
    assert model.lm_head.weight.grad is not None
    assert torch.isfinite(model.lm_head.weight.grad).all()
    assert model.lm_head.weight.grad.abs().sum() > 0


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fast_path_equals_plain_path_values_and_gradients():
    from gpo.models.loading import add_lora

    for lora in (False, True):
        model, tokenizer = tiny_model_and_tokenizer(seed=5)
        if lora:
            model = add_lora(model, 4, 8, 0.0, "all-linear")
        batch = collate_pairs(_pairs(tokenizer), tokenizer.pad_token_id)
        results = []
        for fast in (False, True):
            model.zero_grad()
            out = sequence_logps(model, batch, fast=fast)
            out.logps.sum().backward()
            results.append((out, _grads(model)))
        (plain, g_plain), (quick, g_quick) = results
        torch.testing.assert_close(quick.logps, plain.logps, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(quick.logits_sum, plain.logits_sum, rtol=1e-5, atol=1e-5)
        assert g_plain.keys() == g_quick.keys() and g_plain
        for name in g_plain:
            torch.testing.assert_close(g_quick[name], g_plain[name], rtol=1e-4, atol=1e-6)
        assert getattr(model, "_gpo_fast_logps_ok", None) is None  # forced paths don't cache
        sequence_logps(model, batch)
        assert model._gpo_fast_logps_ok is True


def test_models_that_post_process_logits_fall_back_to_the_plain_path():
    model, tokenizer = tiny_model_and_tokenizer(seed=6)
    forward = model.forward

    def scaled(*args, **kwargs):  # like Cohere's logit_scale, applied after the LM head
        out = forward(*args, **kwargs)
        out.logits = 2.0 * out.logits
        return out

    model.forward = scaled
    batch = collate_pairs(_pairs(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        auto = sequence_logps(model, batch)
        plain = sequence_logps(model, batch, fast=False)
    assert model._gpo_fast_logps_ok is False
    torch.testing.assert_close(auto.logps, plain.logps)


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("layout", ["pairs", "shared"])
def test_chunked_lm_head_equals_one_pass_values_and_gradients(
    monkeypatch, active_lora, lora, layout
):
    """HEAD_CHUNK small: the head runs in checkpointed chunks of 3 tokens, same numbers."""
    import gpo.models.logps
    from gpo.data.collate import collate_shared
    from gpo.models.logps import batch_logps

    model, tokenizer = tiny_model_and_tokenizer(seed=8)
    vocab = model.get_output_embeddings().out_features
    if lora:
        model = active_lora(model)
    pairs = _pairs(tokenizer)
    collate = collate_shared if layout == "shared" else collate_pairs
    batch = collate(pairs, tokenizer.pad_token_id)
    batch_logps(model, batch)  # the per-model path checks run here, not in the counted calls
    head_rows = []
    model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: head_rows.append(args[0].shape[0])
    )
    results = []
    for chunk in (10**9, 3 * vocab):
        monkeypatch.setattr(gpo.models.logps, "HEAD_CHUNK", chunk)
        head_rows.clear()
        model.zero_grad()
        out = batch_logps(model, batch)
        (out.logps * torch.arange(1.0, out.logps.numel() + 1)).sum().backward()
        results.append((out, _grads(model), list(head_rows)))
    (one, g_one, rows_one), (chunked, g_chunked, rows_chunked) = results
    n = int(one.tokens.sum())
    assert rows_one == [n]
    assert max(rows_chunked) == 3 and sum(rows_chunked) == 2 * n  # forward + recompute
    torch.testing.assert_close(chunked.logps, one.logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked.logits_sum, one.logits_sum, rtol=1e-5, atol=1e-5)
    assert g_one.keys() == g_chunked.keys() and g_one
    for name in g_one:
        torch.testing.assert_close(g_chunked[name], g_one[name], rtol=1e-4, atol=1e-6)


def test_target_log_prob_by_hand():
    from gpo.models.logps import _token_logps

    logits = torch.tensor([[0.0, torch.log(torch.tensor(3.0))]], requires_grad=True)
    logp, _ = _token_logps(logits, torch.tensor([1]))
    assert logp.item() == pytest.approx(torch.log(torch.tensor(0.75)).item(), abs=1e-7)
    logp.sum().backward()  # d/dlogits log softmax[1] = onehot(1) - softmax = (-1/4, 1/4)
    assert torch.allclose(logits.grad, torch.tensor([[-0.25, 0.25]]), atol=1e-7)


def test_target_log_prob_equals_cross_entropy_values_and_gradients():
    from gpo.models.logps import _token_logps

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(7, 50, generator=gen) * 4
    targets = torch.randint(0, 50, (7,), generator=gen)
    weights = torch.randn(7, generator=gen)  # a row swap would show
    ours, reference = base.clone().requires_grad_(), base.clone().requires_grad_()
    logp, mean_logit = _token_logps(ours, targets)
    (logp * weights).sum().backward()
    expected = -torch.nn.functional.cross_entropy(reference, targets, reduction="none")
    (expected * weights).sum().backward()
    assert torch.allclose(logp, expected, atol=1e-6)
    assert torch.allclose(ours.grad, reference.grad, atol=1e-7)
    assert torch.allclose(mean_logit, base.mean(-1))
    with torch.no_grad():  # the no-grad path (the reference model) gives the same values
        assert torch.allclose(_token_logps(base, targets)[0], expected, atol=1e-6)


def test_target_log_prob_refuses_a_second_backward():
    from gpo.models.logps import _token_logps

    logits = torch.randn(3, 5, requires_grad=True)
    logp, _ = _token_logps(logits, torch.tensor([0, 1, 2]))
    logp.sum().backward(retain_graph=True)  # the backward consumed the saved log-softmax
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        logp.sum().backward()
