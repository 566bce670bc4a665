"""The on-disk reference log-prob cache: keys, values, persistence, invalidation, training."""

import dataclasses

import numpy as np
import pytest
import torch

from gpo.data import Limits, parse_rows, tokenize_rows
from gpo.data.collate import collate_pairs, collate_sequences, collate_shared
from gpo.models.loading import frozen_copy
from gpo.models.ref_cache import RefLogpCache, model_fingerprint, pair_keys
from gpo.models.reference import Reference
from gpo.models.tiny import tiny_model_and_tokenizer

ROWS = [
    {"prompt": "the cat", "chosen": " runs fast", "rejected": " is a very slow cat"},
    {"prompt": "tell me about the sun", "chosen": " yes", "rejected": " no thanks"},
    {"prompt": "hello", "chosen": " the dog eats bread", "rejected": " tea"},
]


def _setup(seed=21):
    model, tokenizer = tiny_model_and_tokenizer(seed=seed)
    pairs, _ = tokenize_rows(parse_rows(ROWS, "mem"), tokenizer, Limits(max_length=64), "mem")
    return model, tokenizer, pairs


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_cached_values_equal_computed_ones(tmp_path, reduction):
    model, tok, pairs = _setup()
    ref = Reference(model, frozen=frozen_copy(model))
    plain = ref.logps(collate_pairs(pairs, tok.pad_token_id), reduction)
    cache = ref.use_cache(tmp_path)
    first = ref.logps(collate_pairs(pairs, tok.pad_token_id), reduction)
    assert (cache.hits, cache.misses) == (0, 3)
    second = ref.logps(collate_pairs(pairs, tok.pad_token_id), reduction)
    assert (cache.hits, cache.misses) == (3, 3)
    assert torch.equal(first.logps, plain.logps) and torch.equal(second.logps, plain.logps)
    assert torch.equal(second.tokens, plain.tokens)


def test_keys_follow_the_token_ids_not_the_layout(tmp_path):
    _, tok, pairs = _setup()
    pad = tok.pad_token_id
    keys = pair_keys(collate_pairs(pairs, pad))
    assert keys == pair_keys(collate_shared(pairs, pad)) == pair_keys(collate_pairs(pairs, 7))
    assert len(set(keys)) == 3
    for field in ("prompt_ids", "chosen_ids", "rejected_ids"):
        ids = getattr(pairs[0], field)
        changed = dataclasses.replace(pairs[0], **{field: [*ids[:-1], ids[-1] + 1]})
        assert pair_keys(collate_pairs([changed], pad))[0] != keys[0], field
    swapped = dataclasses.replace(
        pairs[0], chosen_ids=pairs[0].rejected_ids, rejected_ids=pairs[0].chosen_ids
    )
    assert pair_keys(collate_pairs([swapped], pad))[0] != keys[0]
    assert pair_keys(collate_sequences([([1, 2], [3])], pad)) is None  # not pairs: never cached


def test_entries_persist_across_instances_and_parts_merge(tmp_path):
    cache = RefLogpCache(tmp_path)
    keys = [bytes([i]) * 16 for i in range(20)]
    for i, k in enumerate(keys):  # 20 flushes -> 20 parts, merged into one when reopened
        cache.put([k], torch.tensor([-1.5 - i, -2.5]), torch.tensor([3, i]))
        cache.flush()
    cache.put([keys[0]], torch.tensor([0.0, 0.0]), torch.tensor([1, 1]))  # known: first stays
    cache.flush()
    assert len(list(tmp_path.glob("part-*.npz"))) == 20
    reopened = RefLogpCache(tmp_path)
    assert len(list(tmp_path.glob("part-*.npz"))) == 1 and len(reopened) == 20
    sums, tokens = reopened.get([keys[0], keys[7]])
    assert sums.tolist() == [-1.5, -8.5, -2.5, -2.5]  # chosen-first
    assert tokens.tolist() == [3, 3, 0, 7]
    assert len(RefLogpCache(tmp_path)) == 20  # the merged part reads back whole
    assert reopened.get([keys[0], b"0" * 16]) is None  # any miss -> recompute the batch


def test_a_damaged_part_is_ignored(tmp_path):
    (tmp_path / "part-bad.npz").write_bytes(b"not a zip file")
    np.savez(tmp_path / "part-wrong.npz", other=np.zeros(3))
    assert len(RefLogpCache(tmp_path)) == 0


def test_fingerprint_tracks_the_weights_and_ignores_lora_adapters(active_lora):
    model, _, _ = _setup(seed=22)
    base = model_fingerprint(model)
    assert model_fingerprint(model) == base
    assert model_fingerprint(model, extra="mixed_precision=bf16") != base
    lora = active_lora(frozen_copy(model), std=1.0)
    assert Reference(lora).fingerprint() == base  # adapters are off in pi_ref
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    assert model_fingerprint(model) != base


def test_a_second_run_reads_every_reference_logp_from_the_cache(tiny_config, tmp_path, capsys):
    from gpo.train.tracking import read_metrics
    from gpo.train.trainer import Trainer

    def run(name, **kw):
        cache = str(tmp_path / "cache")
        trainer = Trainer(tiny_config(name, max_steps=6, eval_steps=6, ref_cache=cache, **kw))
        trainer.run()
        losses = [r["loss"] for r in read_metrics(tmp_path / name) if "loss" in r]
        return trainer.reference.cache, losses

    cold, cold_losses = run("cold")
    assert cold.misses > 0
    warm, warm_losses = run("warm")
    assert warm.misses == 0 and warm.hits == cold.hits + cold.misses
    assert warm_losses == cold_losses  # same batches, so bit-identical values
    assert "from the cache" in capsys.readouterr().out
    other, _ = run("other", max_completion_length=2)  # other tokenization: other keys
    assert other.misses > 0
