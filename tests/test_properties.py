"""Property-based tests (hypothesis) of the data loader and the collator, beyond the row-level
ones in test_data.py: arbitrary JSON values as rows, arbitrary bytes as a JSONL file, and random
token lists through the collator. Nothing may crash except with a clear DataError."""

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpo.data.collate import collate_pairs, collate_sequences
from gpo.data.formats import DataError, parse_rows
from gpo.data.sources import load_rows
from gpo.data.tokenize import TokenizedPair

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["prompt", "chosen", "rejected", "role", "content", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(json_values, max_size=4))
def test_any_json_rows_parse_or_raise_data_error(rows: list[Any]) -> None:
    try:
        parsed = parse_rows(rows, "fuzz")
    except DataError as e:
        assert str(e).startswith("fuzz") and "\n" not in str(e)
        return
    assert len(parsed) == len(rows)
    for r in parsed:
        assert not isinstance(r.chosen, str) or r.chosen.strip()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.binary(max_size=40) | json_values.map(json.dumps).map(str.encode)))
def test_any_bytes_as_jsonl_load_or_raise_data_error(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.jsonl"
        path.write_bytes(b"\n".join(lines))
        try:
            rows = load_rows(str(path))
            parse_rows(rows, str(path))
        except DataError as e:
            assert str(path) in str(e)


token_lists = st.lists(st.integers(4, 50), max_size=7)


def _check(batch: Any, seqs: list[tuple[list[int], list[int]]], pad: int, side: str) -> None:
    n, length = batch.input_ids.shape
    assert n == len(seqs) and length == max(len(p) + len(c) for p, c in seqs)
    for i, (prompt, completion) in enumerate(seqs):
        real = batch.attention_mask[i].bool()
        k = len(prompt) + len(completion)
        assert int(real.sum()) == k
        where = real.nonzero().flatten().tolist()
        assert where == (list(range(k)) if side == "right" else list(range(length - k, length)))
        assert batch.input_ids[i][real].tolist() == prompt + completion
        assert (batch.input_ids[i][~real] == pad).all()
        assert batch.position_ids[i][real].tolist() == list(range(k))
        comp = batch.completion_mask[i].bool()
        assert not (comp & ~real).any()  # scored tokens are real tokens
        assert batch.input_ids[i][comp].tolist() == completion


@settings(max_examples=150, deadline=None)
@given(
    seqs=st.lists(st.tuples(token_lists, token_lists), min_size=1, max_size=5),
    side=st.sampled_from(["right", "left"]),
)
def test_collate_sequences_masks_and_positions_agree(
    seqs: list[tuple[list[int], list[int]]], side: str
) -> None:
    _check(collate_sequences(seqs, 0, side), seqs, 0, side)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(
    pairs=st.lists(
        st.builds(
            TokenizedPair,
            index=st.integers(0, 10_000),
            prompt_ids=token_lists,
            chosen_ids=token_lists.filter(bool),
            rejected_ids=token_lists.filter(bool),
        ),
        min_size=1,
        max_size=4,
    ),
    side=st.sampled_from(["right", "left"]),
)
def test_collate_pairs_is_chosen_then_rejected(pairs: list[TokenizedPair], side: str) -> None:
    batch = collate_pairs(pairs, 1, side)  # type: ignore[arg-type]
    seqs = [(p.prompt_ids, p.chosen_ids) for p in pairs]
    seqs += [(p.prompt_ids, p.rejected_ids) for p in pairs]
    _check(batch, seqs, 1, side)
    assert batch.indices.tolist() == [p.index for p in pairs]
    assert batch.input_ids.dtype == torch.long
