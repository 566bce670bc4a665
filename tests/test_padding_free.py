"""Padding-free training (gpo.train.length_groups): length groups give the padded batch's
per-pair losses and gradients, and the same training run."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpo.data import Limits, parse_rows, tokenize_rows
from gpo.data.collate import collate_for_training
from gpo.data.tokenize import TokenizedPair
from gpo.losses.family import preference_loss
from gpo.models.loading import frozen_copy
from gpo.models.logps import PolicyLogps, SequenceLogps
from gpo.models.reference import Reference
from gpo.models.tiny import DEFAULT_WORDS, tiny_model_and_tokenizer
from gpo.train import length_groups as lg
from gpo.train.trainer import Trainer

WORDS = [w for w in DEFAULT_WORDS if w.isalpha() and w not in ("system", "user", "assistant")]


def _rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Pairs whose prompt and response lengths vary widely (1-40 words each, independently)."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    rows = []
    for _ in range(n):
        k = rng.choice([1, 2, 3, 12, 25, 40])
        chosen, rejected = text(rng.randint(1, 30)), text(rng.randint(1, 30))
        rows.append(
            {"prompt": text(k), "chosen": " good " + chosen, "rejected": " bad " + rejected}
        )
    return rows


def _pairs(tokenizer, n: int = 8, seed: int = 0) -> list[TokenizedPair]:
    pairs, _ = tokenize_rows(parse_rows(_rows(n, seed), "mem"), tokenizer, Limits(512), "mem")
    assert len(pairs) == n
    return pairs


def _pair(index: int, prompt: int, chosen: int, rejected: int) -> TokenizedPair:
    return TokenizedPair(index, [1] * prompt, [2] * chosen, [3] * rejected)


# --- grouping --------------------------------------------------------------------------------


def test_computed_tokens_match_the_collated_batches():
    _, tokenizer = tiny_model_and_tokenizer(seed=1)
    pairs = _pairs(tokenizer)
    for shared in (True, False):
        batch = collate_for_training(pairs, 0, share_prompt=shared)
        if shared:
            padded = batch.prompt_ids.numel() + batch.completion_ids.numel()
            real = int(batch.prompt_mask.sum() + batch.completion_mask.sum())
        else:
            padded, real = batch.input_ids.numel(), int(batch.attention_mask.sum())
        assert lg.computed_tokens(pairs, shared) == (padded, real)


def test_equal_lengths_stay_one_group_in_order():
    pairs = [_pair(i, 30, 200, 200) for i in range(6)]
    for shared in (True, False):
        assert lg.length_groups(pairs, shared, 0.0) == [list(range(6))]


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("max_padding", [0.0, 0.1, 0.3])
def test_groups_are_a_permutation_within_the_padding_budget(shared, max_padding):
    rng = random.Random(3)
    pairs = [
        _pair(i, rng.randint(1, 600), rng.randint(1, 300), rng.randint(1, 300)) for i in range(16)
    ]
    groups = lg.length_groups(pairs, shared, max_padding)
    assert sorted(i for g in groups for i in g) == list(range(16))
    assert len(groups) > 1
    for g in groups:
        padded, real = lg.computed_tokens([pairs[i] for i in g], shared)
        assert len(g) == 1 or padded - real <= max_padding * padded
    total = sum(lg.computed_tokens([pairs[i] for i in g], shared)[0] for g in groups)
    assert total < lg.computed_tokens(pairs, shared)[0]  # less computed than the padded batch


def test_a_split_saving_less_than_its_extra_calls_is_not_made():
    """Two pairs 100 tokens apart: at 10% they would be split, but one more group costs
    GROUP_COST_TOKENS (128) padded tokens, more than the 100 saved; 1000 apart they are split.
    max_padding 0 always splits (one pair per group)."""
    near = [_pair(0, 100, 50, 50), _pair(1, 200, 50, 50)]
    far = [_pair(0, 100, 50, 50), _pair(1, 1100, 50, 50)]
    assert lg.GROUP_COST_TOKENS == 128
    assert lg.length_groups(near, True, 0.1) == [[0, 1]]
    assert lg.length_groups(near, True, 0.0) == [[0], [1]]
    assert lg.length_groups(far, True, 0.1) == [[0], [1]]


def test_max_padding_one_is_the_padded_batch():
    pairs = [_pair(0, 5, 1, 1), _pair(1, 500, 300, 2)]
    assert lg.length_groups(pairs, True, 1.0) == [[0, 1]]
    assert lg.length_groups(pairs, True, 0.0) == [[0], [1]]


# --- values and gradients --------------------------------------------------------------------


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(policy, reference, batches, groups, shared_pairs_n):
    """Per-pair losses and the gradient of their mean, as the trainer's micro-step forms them."""
    policy.zero_grad()
    parts = policy(batches)
    logps = lg.merge_groups([SequenceLogps(*o) for o in parts], groups)
    ref = lg.merge_groups([reference.logps(b) for b in batches], groups)
    out = preference_loss("logistic", *logps.split(), *ref.split(), beta=0.5)
    assert out.losses.shape == (shared_pairs_n,)
    out.losses.mean().backward()
    return out.losses.detach(), logps, _grads(policy)


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("share_prompt", [True, False])
def test_groups_give_the_padded_losses_and_gradients(active_lora, lora, share_prompt):
    model, tokenizer = tiny_model_and_tokenizer(seed=7)
    if lora:
        model = active_lora(model)
        reference = Reference(model)
    else:
        reference = Reference(model, frozen_copy(model))
        with torch.no_grad():  # the policy moved away from pi_ref: rho is not 0
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
    pairs = _pairs(tokenizer)
    pad = tokenizer.pad_token_id
    policy = PolicyLogps(model)
    shared = share_prompt and all(p.prompt_ids for p in pairs)

    whole = [list(range(len(pairs)))]
    padded = [collate_for_training(pairs, pad, share_prompt)]
    want_loss, want_logps, want_grads = _step(policy, reference, padded, whole, len(pairs))

    groups = lg.length_groups(pairs, shared, 0.0)
    assert len(groups) > 2 and groups != whole  # really split, and reordered
    batches = [collate_for_training([pairs[i] for i in g], pad, share_prompt) for g in groups]
    got_loss, got_logps, got_grads = _step(policy, reference, batches, groups, len(pairs))

    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_logps.logps, want_logps.logps, rtol=1e-5, atol=1e-5)
    assert got_logps.tokens.tolist() == want_logps.tokens.tolist()
    torch.testing.assert_close(got_logps.logits_sum, want_logps.logits_sum, rtol=1e-5, atol=1e-4)
    assert want_grads.keys() == got_grads.keys() and want_grads
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


# --- training runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def variable_data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("variable-data") / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(40, seed=5)))
    return path


def _train(cfg, spy=None):
    trainer = Trainer(cfg)
    summary = trainer.run()
    rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    return summary, [r for r in rows if "loss" in r]


def _assert_same_metrics(a, b, tol=1e-5):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        for k in x:
            if k in ("step", "time", "timestamp"):
                continue
            assert x[k] == pytest.approx(y[k], rel=tol, abs=tol), k


@pytest.mark.parametrize(
    ("finetune", "share_prompt", "accum"),
    [("full", True, 1), ("lora", False, 1), ("full", True, 2)],
)
def test_padding_free_run_equals_the_padded_run(
    tiny_config, variable_data_file, monkeypatch, finetune, share_prompt, accum
):
    calls: list[int] = []
    real = lg.length_groups

    def counting(pairs, shared, max_padding):
        groups = real(pairs, shared, max_padding)
        calls.append(len(groups))
        return groups

    monkeypatch.setattr("gpo.train.trainer.length_groups", counting)
    common = dict(
        data=str(variable_data_file),
        finetune=finetune,
        share_prompt=share_prompt,
        gradient_accumulation_steps=accum,
        max_steps=5,
        eval_steps=0,
        learning_rate=3e-3,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        ref_cache="none",
    )
    _, padded = _train(tiny_config(f"padded-{accum}", max_padding=1.0, **common))
    assert set(calls) == {1}
    calls.clear()
    _, free = _train(tiny_config(f"free-{accum}", max_padding=0.0, **common))
    assert max(calls) > 2  # the padding-free run really ran several groups per micro-step
    _assert_same_metrics(padded, free)
    assert padded[-1]["loss"] != pytest.approx(padded[0]["loss"], abs=1e-4)  # it trained


@pytest.mark.slow
def test_two_process_padding_free_equals_one_process_padded(
    tiny_model_dir, variable_data_file, tmp_path
):
    """DDP: 2 processes x batch 2 with length groups = 1 process x batch 4, padded."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    config = Path(__file__).parents[1] / "configs" / "accelerate" / "multi_cpu.yaml"
    common = [
        *("--model", str(tiny_model_dir), "--data", str(variable_data_file)),
        *("--finetune", "full", "--learning-rate", "3e-3", "--max-steps", "4"),
        *("--logging-steps", "1", "--eval-steps", "0", "--kl-prompts", "0", "--save-steps", "0"),
        *("--progress", "false", "--report-to", "none", "--ref-cache", "none"),
        *("--save-final", "false", "--lr-scheduler", "constant", "--warmup-ratio", "0"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = [sys.executable, "-m", "gpo.cli", "train", *common, "--batch-size", "4"]
    one += ["--max-padding", "1", "--out", str(tmp_path / "one")]
    port = _free_port()
    two = [accelerate, "launch", "--config_file", str(config), "--main_process_port", str(port)]
    two += ["-m", "gpo.cli", "train", *common, "--batch-size", "2", "--max-padding", "0"]
    two += ["--out", str(tmp_path / "two")]
    subprocess.run(one, env=env, check=True, capture_output=True, timeout=300)
    subprocess.run(two, env=env, check=True, capture_output=True, timeout=300)

    def metrics(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if "loss" in r]

    _assert_same_metrics(metrics(tmp_path / "one"), metrics(tmp_path / "two"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
