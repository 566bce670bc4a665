"""Preference data: sources, TRL formats, tokenization, batching, train/eval preparation."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpo.data.collate import collate_pairs
from gpo.data.formats import ROLES, DataError, NoSuchSplit, PreferenceRow, parse_rows
from gpo.data.prepare import prepare_data
from gpo.data.sources import load_rows
from gpo.data.tokenize import Limits, TokenizedPair, tokenize_rows
from gpo.models.tiny import CHAT_TEMPLATE, DEFAULT_WORDS, tiny_tokenizer

Row = dict[str, Any]


@functools.cache
def _tokenizer() -> Any:
    return tiny_tokenizer()


@pytest.fixture
def tok() -> Any:
    t = _tokenizer()
    assert t.chat_template == CHAT_TEMPLATE  # nobody changed the shared instance
    return t


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parquet/CSV reads go through `datasets`, which caches Arrow files: keep them in tmp."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def ids(tok: Any, text: str) -> list[int]:
    return list(tok(text)["input_ids"])


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


STD: Row = {"prompt": "tell me a fact", "chosen": "the sun is big", "rejected": "no"}
STD_IMPLICIT: Row = {"chosen": "the cat is happy", "rejected": "the cat is sad"}
CONV: Row = {
    "prompt": [msg("system", "be good"), msg("user", "hello")],
    "chosen": [msg("assistant", "hello you")],
    "rejected": [msg("assistant", "no")],
}


def load_and_parse(path: Path, split: str | None = None) -> list[PreferenceRow]:
    return parse_rows(load_rows(str(path), split), str(path))


def assert_names(err: pytest.ExceptionInfo[DataError], path: Path, row: int, field: str) -> None:
    text = str(err.value)
    assert str(path) in text
    assert f"row {row}," in text or text.endswith(f"row {row}") or f"row {row}:" in text
    assert f"'{field}'" in text


# --------------------------------------------------------------------------- validation errors

BAD_ROWS: list[tuple[str, Row, str, str]] = [
    # (case, bad row placed at row 2 after a valid standard row, field, message fragment)
    ("missing chosen", {"prompt": "a", "rejected": "b"}, "chosen", "missing"),
    ("missing rejected", {"prompt": "a", "chosen": "b"}, "rejected", "missing"),
    ("null rejected", {"prompt": "a", "chosen": "b", "rejected": None}, "rejected", "is null"),
    ("int chosen", {"prompt": "a", "chosen": 3, "rejected": "b"}, "chosen", "got int"),
    ("int prompt", {"prompt": 7, "chosen": "a", "rejected": "b"}, "prompt", "got int"),
    ("empty chosen", {"prompt": "a", "chosen": "", "rejected": "b"}, "chosen", "empty"),
    ("blank rejected", {"prompt": "a", "chosen": "b", "rejected": " \t\n"}, "rejected", "empty"),
    ("mixed: conv after std", CONV, "chosen", "mixed formats"),
]


@pytest.mark.parametrize(
    ("case", "bad", "field", "fragment"), BAD_ROWS, ids=[c[0] for c in BAD_ROWS]
)
def test_standard_row_errors_name_file_row_field(
    tmp_path: Path, case: str, bad: Row, field: str, fragment: str
) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [STD, bad, STD])
    with pytest.raises(DataError, match=re.escape(fragment)) as err:
        load_and_parse(path)
    assert_names(err, path, 2, field)


CONV_BAD: list[tuple[str, Row, str, str]] = [
    (
        "unknown role",
        {**CONV, "chosen": [msg("robot", "beep")]},
        "chosen",
        "unknown role 'robot'",
    ),
    (
        "last message not assistant",
        {**CONV, "rejected": [msg("assistant", "hm"), msg("user", "why")]},
        "rejected",
        "last message must be from the assistant, got 'user'",
    ),
    (
        "message without content",
        {**CONV, "chosen": [{"role": "assistant"}]},
        "chosen",
        "message 1 must be a {'role', 'content'} object",
    ),
    (
        "content not a string",
        {**CONV, "prompt": [msg("user", "hi"), {"role": "user", "content": 5}]},
        "prompt",
        "message 2 content must be a string, got int",
    ),
    ("empty message list", {**CONV, "prompt": []}, "prompt", "empty list of messages"),
    (
        "whitespace reply",
        {**CONV, "chosen": [msg("assistant", "  ")]},
        "chosen",
        "empty or whitespace-only",
    ),
    ("mixed: std after conv", STD, "chosen", "mixed formats"),
]


@pytest.mark.parametrize(
    ("case", "bad", "field", "fragment"), CONV_BAD, ids=[c[0] for c in CONV_BAD]
)
def test_conversational_row_errors_name_file_row_field(
    tmp_path: Path, case: str, bad: Row, field: str, fragment: str
) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [CONV, CONV, bad])
    with pytest.raises(DataError, match=re.escape(fragment)) as err:
        load_and_parse(path)
    assert_names(err, path, 3, field)


def test_implicit_prompt_without_common_prefix(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "implicit.jsonl",
        [{"chosen": "the cat", "rejected": "the dog"}, {"chosen": "yes cat", "rejected": "no"}],
    )
    with pytest.raises(DataError, match="share no common prefix") as err:
        load_and_parse(path)
    assert f"{path}: row 2" in str(err.value)

    conv = {"chosen": [msg("user", "hi"), msg("assistant", "a")], "rejected": [msg("user", "yo")]}
    with pytest.raises(DataError, match="share no leading messages") as err2:
        parse_rows([conv], "chat.json")
    assert "chat.json: row 1" in str(err2.value)


def test_malformed_json_line_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(STD) + "\n\n" + '{"prompt": "a", "chosen": \n' + json.dumps(STD))
    with pytest.raises(DataError, match="malformed JSON") as err:
        load_rows(str(path))
    assert f"{path}: line 3:" in str(err.value)  # blank line 2 still counts


def test_non_utf8_bytes_name_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(STD).encode()
    path.write_bytes(good + b"\n" + '{"prompt": "café"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataError, match="not valid UTF-8") as err:
        load_rows(str(path))
    assert f"{path}: line 2:" in str(err.value)

    as_json = tmp_path / "latin1.json"
    as_json.write_bytes(b"[" + '{"prompt": "café"}'.encode("latin-1") + b"]")
    with pytest.raises(DataError, match=f"{re.escape(str(as_json))}: not valid UTF-8"):
        load_rows(str(as_json))


def test_lone_surrogate_escape_is_a_data_error(tmp_path: Path, tok: Any) -> None:
    # Valid JSON and valid UTF-8 on disk, but "\ud800" decodes to a string no tokenizer can encode.
    path = tmp_path / "surrogate.jsonl"
    path.write_text(
        json.dumps(STD) + "\n" + '{"prompt": "a", "chosen": "b \\ud800", "rejected": "c"}\n'
    )
    with pytest.raises(DataError, match="not valid Unicode") as err:
        load_and_parse(path)
    assert_names(err, path, 2, "chosen")
    bad = {**CONV, "chosen": [msg("assistant", "x\udfff")]}
    with pytest.raises(DataError, match="message 1 content: not valid Unicode"):
        parse_rows([bad], "s")


def test_non_object_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", [STD, ["a", "b"]])
    with pytest.raises(DataError, match="is a JSON array, not an object") as err:
        load_and_parse(path)
    assert f"{path}: row 2" in str(err.value)
    first = write_jsonl(tmp_path / "first.jsonl", ["just a string", STD])
    with pytest.raises(DataError, match="row 1: is a JSON string, not an object") as err:
        load_and_parse(first)
    assert f"{first}: row 1" in str(err.value)


MISLEADING_BEFORE: list[tuple[str, list[Any], str]] = [
    # (case, rows, the whole error after "<path>: ") - each used to name a different cause
    (
        "null chosen",
        [{**STD, "chosen": None}],
        "row 1, field 'chosen': is null (expected a string)",
    ),
    (
        "null in a conversational row",
        [CONV, {**CONV, "rejected": None}],
        "row 2, field 'rejected': is null (expected a list of messages)",
    ),
    (
        "list prompt, string replies",
        [{**STD, "prompt": [msg("user", "hi")]}],
        "row 1: prompt is a message list but chosen is a string: mixed formats in one row",
    ),
    (
        "string prompt, list replies",
        [{**CONV, "prompt": "hi"}],
        "row 1: prompt is a string but chosen is a message list: mixed formats in one row",
    ),
    (
        "list chosen, string rejected",
        [{**CONV, "rejected": "no"}],
        "row 1: prompt is a message list but rejected is a string: mixed formats in one row",
    ),
    (
        "JSON array as the first row",
        [["tell me", "yes", "no"], STD],
        "row 1: is a JSON array, not an object with 'chosen' and 'rejected' fields",
    ),
]


@pytest.mark.parametrize(
    ("case", "rows", "message"), MISLEADING_BEFORE, ids=[c[0] for c in MISLEADING_BEFORE]
)
def test_data_errors_name_the_real_cause(
    tmp_path: Path, case: str, rows: list[Any], message: str
) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_and_parse(path)
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize("name", ["empty.jsonl", "blank.jsonl", "empty.json", "list.json"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    text = {"empty.jsonl": "", "blank.jsonl": "\n  \n", "empty.json": "", "list.json": "[]"}[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: no rows$"):
        load_and_parse(path)


def test_json_dict_without_requested_split(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": [STD], "validation": [STD]}))
    with pytest.raises(NoSuchSplit, match="no split 'test'") as err:
        load_rows(str(path), "test")
    assert str(path) in str(err.value)
    assert "train, validation" in str(err.value)  # lists what is there
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([STD]))
    with pytest.raises(NoSuchSplit):
        load_rows(str(listed), "test")
    with pytest.raises(NoSuchSplit, match="single file"):
        load_rows(str(write_jsonl(tmp_path / "a.jsonl", [STD])), "test")


def test_json_object_that_is_not_rows(tmp_path: Path) -> None:
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"train": {"chosen": "a"}}))
    with pytest.raises(DataError, match="expected a list of rows, got dict"):
        load_rows(str(path))


def test_unsupported_suffix_missing_path_and_plain_folder(tmp_path: Path) -> None:
    txt = tmp_path / "data.txt"
    txt.write_text(json.dumps(STD))
    with pytest.raises(DataError, match=r"unsupported file type \(use .jsonl, .json"):
        load_rows(str(txt))
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=f"^{re.escape(str(missing))}: no such file or folder$"):
        load_rows(str(missing))
    with pytest.raises(DataError, match="no such file"):
        load_rows("./relative/missing")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "rows.jsonl").write_text(json.dumps(STD))
    with pytest.raises(DataError, match="a folder, but not a dataset saved with save_to_disk"):
        load_rows(str(folder))


def test_hub_name_offline_says_use_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="cannot load dataset 'no-such-org/no-such-data'") as err:
        load_rows("no-such-org/no-such-data")
    assert "local file" in str(err.value)


# --------------------------------------------------------------------------- correct parsing


def test_parse_standard_and_conversational() -> None:
    (row,) = parse_rows([STD], "s")
    assert (row.prompt, row.chosen, row.rejected) == (STD["prompt"], STD["chosen"], "no")
    assert not row.conversational and row.index == 0
    rows = parse_rows([CONV, CONV], "c")
    assert all(r.conversational for r in rows)
    assert rows[0].prompt == CONV["prompt"] and rows[0].chosen == CONV["chosen"]
    assert rows[1].index == 1
    extra = {**CONV, "chosen": [{"role": "assistant", "content": "hi", "name": "x"}]}
    with pytest.raises(DataError, match="message 1 has 'name': gpo trains on role and content"):
        parse_rows([CONV, extra], "c")  # was: dropped silently


@pytest.mark.parametrize(
    ("chosen", "rejected"),
    [
        ("the cat is happy", "the cat is sad"),
        ("the cat likes fish", "the cat loves dogs"),  # differ mid-word: split moves to a space
        ("tell me.  a fact", "tell me.  no"),
        ("ab", "ac"),
    ],
)
def test_implicit_standard_matches_trl(chosen: str, rejected: str) -> None:
    from trl.data_utils import extract_prompt

    (row,) = parse_rows([{"chosen": chosen, "rejected": rejected}], "s")
    expected = extract_prompt({"chosen": chosen, "rejected": rejected})
    assert (row.prompt, row.chosen, row.rejected) == (
        expected["prompt"],
        expected["chosen"],
        expected["rejected"],
    )
    assert row.prompt + row.chosen == chosen and row.prompt + row.rejected == rejected


def test_implicit_standard_split_at_space() -> None:
    (row,) = parse_rows([{"chosen": "the cat is happy", "rejected": "the cat is sad"}], "s")
    assert (row.prompt, row.chosen, row.rejected) == ("the cat is", " happy", " sad")
    # like TRL, only a space right before the divergence moves: no search back to a word start
    (row,) = parse_rows([{"chosen": "the cat likes", "rejected": "the cat loves"}], "s")
    assert (row.prompt, row.chosen, row.rejected) == ("the cat l", "ikes", "oves")


def test_implicit_prefix_response_is_a_data_error() -> None:
    # "x cat" is a prefix of "x cat dog": the shared prefix leaves chosen empty
    with pytest.raises(DataError, match="row 2, field 'chosen'"):
        parse_rows([STD_IMPLICIT, {"chosen": "x cat", "rejected": "x cat dog"}], "s")


def test_implicit_conversational_matches_trl() -> None:
    from trl.data_utils import extract_prompt

    shared = [msg("system", "be good"), msg("user", "hello")]
    example = {
        "chosen": [*shared, msg("assistant", "hello you")],
        "rejected": [*shared, msg("assistant", "no")],
    }
    (row,) = parse_rows([example], "c")
    assert row.conversational
    assert row.prompt == shared
    assert row.chosen == [msg("assistant", "hello you")]
    assert row.rejected == [msg("assistant", "no")]
    expected = extract_prompt(example)
    assert (row.prompt, row.chosen, row.rejected) == (
        expected["prompt"],
        expected["chosen"],
        expected["rejected"],
    )


STD_ROWS: list[Row] = [
    {"prompt": f"tell me about {w}", "chosen": f"{w} is good", "rejected": f"{w} is bad"}
    for w in ("cats", "dogs", "trees", "music")
]


def as_tuples(rows: list[PreferenceRow]) -> list[tuple[Any, ...]]:
    return [(r.prompt, r.chosen, r.rejected, r.conversational) for r in rows]


EXPECTED_STD = [(r["prompt"], r["chosen"], r["rejected"], False) for r in STD_ROWS]


def test_json_list_and_split_dict_and_jsonl(tmp_path: Path) -> None:
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(STD_ROWS))
    assert as_tuples(load_and_parse(as_list)) == EXPECTED_STD
    assert as_tuples(load_and_parse(as_list, "train")) == EXPECTED_STD

    as_dict = tmp_path / "dict.json"
    as_dict.write_text(json.dumps({"train": STD_ROWS[:3], "test": STD_ROWS[3:]}))
    assert as_tuples(load_and_parse(as_dict)) == EXPECTED_STD[:3]  # default split: train
    assert as_tuples(load_and_parse(as_dict, "test")) == EXPECTED_STD[3:]

    lines = write_jsonl(tmp_path / "rows.jsonl", STD_ROWS)
    assert as_tuples(load_and_parse(lines)) == EXPECTED_STD
    json_lines = tmp_path / "lines.json"  # JSON lines in a .json file, as `datasets` accepts
    json_lines.write_text(lines.read_text())
    assert as_tuples(load_and_parse(json_lines)) == EXPECTED_STD


def test_parquet_and_csv(tmp_path: Path) -> None:
    import datasets
    import pandas as pd

    frame = pd.DataFrame(STD_ROWS)
    frame.to_parquet(tmp_path / "rows.parquet")
    frame.to_csv(tmp_path / "rows.csv", index=False)
    assert as_tuples(load_and_parse(tmp_path / "rows.parquet")) == EXPECTED_STD
    assert as_tuples(load_and_parse(tmp_path / "rows.csv")) == EXPECTED_STD

    chat = [CONV, {**CONV, "chosen": [msg("assistant", "yes")]}]
    datasets.Dataset.from_list(chat).to_parquet(str(tmp_path / "chat.parquet"))
    parsed = load_and_parse(tmp_path / "chat.parquet")
    assert [r.chosen for r in parsed] == [CONV["chosen"], [msg("assistant", "yes")]]
    assert all(r.conversational and r.prompt == CONV["prompt"] for r in parsed)


def test_saved_dataset_and_dataset_dict(tmp_path: Path) -> None:
    import datasets

    single = tmp_path / "single"
    datasets.Dataset.from_list(STD_ROWS).save_to_disk(str(single))
    assert as_tuples(load_and_parse(single)) == EXPECTED_STD
    assert as_tuples(load_and_parse(single, "train")) == EXPECTED_STD
    with pytest.raises(NoSuchSplit, match="no split 'test'"):
        load_rows(str(single), "test")  # like a single file, not the train rows again

    both = tmp_path / "both"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(STD_ROWS[:1]),
            "test": datasets.Dataset.from_list(STD_ROWS[1:]),
        }
    ).save_to_disk(str(both))
    assert as_tuples(load_and_parse(both)) == EXPECTED_STD[:1]
    assert as_tuples(load_and_parse(both, "test")) == EXPECTED_STD[1:]
    with pytest.raises(NoSuchSplit, match=r"no split 'validation' \(splits: train, test\)"):
        load_rows(str(both), "validation")


# --------------------------------------------------------------------------- tokenization


def std_row(prompt: str, chosen: str, rejected: str, index: int = 0) -> PreferenceRow:
    return PreferenceRow(prompt, chosen, rejected, conversational=False, index=index)


def test_identical_and_too_long_rows_dropped_and_counted(tok: Any) -> None:
    rows = [
        std_row("tell me", " yes", " no", 0),
        std_row("tell me", " same", " same", 1),
        std_row("tell me", " one two three four five six", " no", 2),
        std_row("hello", " yes", " no no", 3),
    ]
    pairs, report = tokenize_rows(rows, tok, Limits(max_length=6), "src")
    assert [p.index for p in pairs] == [0, 3]
    assert (report.rows, report.kept, report.identical, report.too_long) == (4, 2, 1, 1)
    assert sorted(report.dropped_indices) == [1, 2]
    assert "dropped 1 with chosen == rejected" in str(report)
    assert "dropped 1 longer than max_length" in str(report)
    # max_length is inclusive: prompt 1 + longest completion (" no no" + eos = 3) fits in 4
    pairs, report = tokenize_rows(rows[3:], tok, Limits(max_length=4), "src")
    assert report.kept == 1
    with pytest.raises(DataError):
        tokenize_rows(rows[3:], tok, Limits(max_length=3), "src")


def test_prompt_truncation_keep_end_vs_keep_start(tok: Any) -> None:
    row = std_row("one two three a an the", " cat", " dog")
    full = ids(tok, "one two three a an the")
    assert len(full) == 6
    (end,), report = tokenize_rows([row], tok, Limits(max_prompt_length=3), "s")
    assert end.prompt_ids == ids(tok, "a an the") == full[-3:]
    assert report.truncated_prompts == 1
    (start,), _ = tokenize_rows(
        [row], tok, Limits(max_prompt_length=3, prompt_truncation="keep_start"), "s"
    )
    assert start.prompt_ids == ids(tok, "one two three") == full[:3]
    assert end.chosen_ids == start.chosen_ids == [*ids(tok, "cat"), tok.eos_token_id]
    (untouched,), report = tokenize_rows([row], tok, Limits(max_prompt_length=6), "s")
    assert untouched.prompt_ids == full and report.truncated_prompts == 0


def test_completion_truncation_keeps_start(tok: Any) -> None:
    row = std_row("tell me", " cat dog bird tree", " sun")
    (pair,), report = tokenize_rows([row], tok, Limits(max_completion_length=3), "s")
    assert pair.chosen_ids == ids(tok, "cat dog bird")  # EOS lost with the tail
    assert pair.rejected_ids == [*ids(tok, "sun"), tok.eos_token_id]  # short enough: untouched
    assert report.truncated_completions == 1
    assert "truncated 1 completions" in str(report)


def test_eos_appended_once_for_standard_rows(tok: Any) -> None:
    eos = tok.eos_token_id
    plain = std_row("tell me", " yes", " no")
    ended = std_row("tell me", " yes<eos>", " no <eos>")
    (a,), _ = tokenize_rows([plain], tok, Limits(), "s")
    (b,), _ = tokenize_rows([ended], tok, Limits(), "s")
    assert a.prompt_ids == ids(tok, "tell me")
    assert a.chosen_ids == [*ids(tok, "yes"), eos] == b.chosen_ids
    assert a.rejected_ids == [*ids(tok, "no"), eos] == b.rejected_ids
    assert b.chosen_ids.count(eos) == 1 and b.rejected_ids.count(eos) == 1


def test_conversational_rendering_uses_chat_template(tok: Any) -> None:
    (row,) = parse_rows([CONV], "c")
    (pair,), _ = tokenize_rows([row], tok, Limits(), "c")
    expected_prompt = tok.apply_chat_template(
        CONV["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert pair.prompt_ids == list(expected_prompt)
    generation_prompt = ids(tok, "<bos>assistant :")
    assert pair.prompt_ids[-len(generation_prompt) :] == generation_prompt
    eos = tok.eos_token_id
    # the template ends the turn with ' <eos>'; no second EOS is appended
    assert pair.chosen_ids == [*ids(tok, "hello you"), eos]
    assert pair.rejected_ids == [*ids(tok, "no"), eos]
    full = tok.apply_chat_template(
        CONV["prompt"] + CONV["chosen"], tokenize=True, return_dict=True
    )["input_ids"]
    assert pair.prompt_ids + pair.chosen_ids == list(full)


def test_conversational_without_chat_template_is_a_clear_error() -> None:
    bare = tiny_tokenizer()
    bare.chat_template = None
    rows = parse_rows([CONV], "chat.jsonl")
    with pytest.raises(DataError, match=r"chat\.jsonl: conversational data needs a tokenizer with"):
        tokenize_rows(rows, bare, Limits(), "chat.jsonl")
    (pair,), _ = tokenize_rows(parse_rows([STD], "s"), bare, Limits(), "s")  # standard is fine
    assert pair.chosen_ids[-1] == bare.eos_token_id


def test_zero_usable_rows_reports_counts(tok: Any) -> None:
    rows = [
        std_row("a", " same", " same", 0),
        std_row("a", " same", " same", 1),
        std_row("one two three", " four five", " no", 2),
    ]
    with pytest.raises(DataError) as err:
        tokenize_rows(rows, tok, Limits(max_length=3), "data.jsonl")
    text = str(err.value)
    assert text.startswith("no usable rows left: data.jsonl: 3 rows, kept 0")
    assert "dropped 2 with chosen == rejected" in text
    assert "dropped 1 longer than max_length 3 (set overlong=truncate to keep them)" in text


def test_limits_validate() -> None:
    with pytest.raises(ValueError, match="prompt_truncation"):
        Limits(prompt_truncation="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_prompt_length must be at least 2"):
        Limits(max_prompt_length=1)
    with pytest.raises(ValueError, match="overlong must be 'drop' or 'truncate', got 'cut'"):
        Limits(overlong="cut")  # type: ignore[arg-type]
    assert [f.name for f in dataclasses.fields(Limits)][-1] == "overlong"  # positional callers


def test_overlong_truncate_cuts_the_completion_first(tok: Any) -> None:
    row = std_row("tell me", " cat dog bird tree", " sun")  # prompt 2 + chosen 5 (with EOS)
    with pytest.raises(DataError, match="dropped 1 longer than max_length 5"):
        tokenize_rows([row], tok, Limits(max_length=5), "s")
    (pair,), report = tokenize_rows([row], tok, Limits(max_length=5, overlong="truncate"), "s")
    assert pair.prompt_ids == ids(tok, "tell me")  # the prompt is left whole
    assert pair.chosen_ids == ids(tok, "cat dog bird")  # the start is kept
    assert pair.rejected_ids == [*ids(tok, "sun"), tok.eos_token_id]  # fits: untouched
    assert (report.kept, report.fitted, report.too_long) == (1, 1, 0)
    assert str(report) == "s: 1 row, kept 1; 1 truncated to max_length 5"


@pytest.mark.parametrize(
    ("how", "kept"), [("keep_end", "a an the"), ("keep_start", "one two three")]
)
def test_overlong_truncate_cuts_a_long_prompt_to_leave_one_token(
    tok: Any, how: str, kept: str
) -> None:
    row = std_row("one two three a an the", " cat dog", " sun")
    limits = Limits(max_length=4, prompt_truncation=how, overlong="truncate")  # type: ignore[arg-type]
    (pair,), report = tokenize_rows([row], tok, limits, "s")
    assert pair.prompt_ids == ids(tok, kept)
    assert pair.chosen_ids == ids(tok, "cat") and pair.rejected_ids == ids(tok, "sun")
    assert report.fitted == 1 and report.truncated_prompts == 0


# --------------------------------------------------------------------------- collation

PAIRS = [
    TokenizedPair(index=5, prompt_ids=[10, 11], chosen_ids=[20, 3], rejected_ids=[21, 22, 23, 3]),
    TokenizedPair(index=7, prompt_ids=[12], chosen_ids=[24, 3], rejected_ids=[25, 3]),
]
PAD = 0


def real(batch: Any, i: int, name: str = "input_ids") -> list[int]:
    return getattr(batch, name)[i][batch.attention_mask[i] == 1].tolist()


def check_pair_batch(batch: Any, pairs: list[TokenizedPair], pad_id: int) -> None:
    n = len(pairs)
    seqs = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [
        (p.prompt_ids, p.rejected_ids) for p in pairs
    ]
    length = max(len(a) + len(b) for a, b in seqs)
    for name in ("input_ids", "attention_mask", "position_ids", "completion_mask"):
        t = getattr(batch, name)
        assert t.shape == (2 * n, length), name
        assert t.dtype == torch.long, name
    assert batch.indices.tolist() == [p.index for p in pairs]
    assert batch.num_pairs == n
    for i, (prompt, completion) in enumerate(seqs):  # chosen rows first, then rejected
        assert real(batch, i) == prompt + completion
        assert int(batch.attention_mask[i].sum()) == len(prompt) + len(completion)
        comp = batch.completion_mask[i] == 1
        assert batch.input_ids[i][comp].tolist() == completion
        assert bool((batch.attention_mask[i][comp] == 1).all())
        pads = batch.attention_mask[i] == 0
        assert bool((batch.input_ids[i][pads] == pad_id).all())
        assert bool((batch.completion_mask[i][pads] == 0).all())
        assert real(batch, i, "position_ids") == list(range(len(prompt) + len(completion)))


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pairs(side: str) -> None:
    batch = collate_pairs(PAIRS, PAD, side)  # type: ignore[arg-type]
    check_pair_batch(batch, PAIRS, PAD)
    assert batch.input_ids.shape == (4, 6)
    mask = batch.attention_mask
    if side == "right":
        assert mask[:, 0].tolist() == [1, 1, 1, 1]
        assert mask[1].tolist() == [1, 1, 1, 0, 0, 0]
    else:
        assert mask[:, -1].tolist() == [1, 1, 1, 1]
        assert mask[1].tolist() == [0, 0, 0, 1, 1, 1]
    # prompt 0 + rejected 0 is the longest row: no padding at all
    assert batch.input_ids[2].tolist() == [10, 11, 21, 22, 23, 3]
    assert batch.completion_mask[2].tolist() == [0, 0, 1, 1, 1, 1]


def test_left_and_right_padding_agree_on_real_tokens() -> None:
    right = collate_pairs(PAIRS, PAD, "right")
    left = collate_pairs(PAIRS, PAD, "left")
    assert not torch.equal(right.input_ids, left.input_ids)
    for i in range(4):
        for name in ("input_ids", "position_ids", "completion_mask"):
            assert real(right, i, name) == real(left, i, name), (i, name)


def test_collate_tokenized_rows_end_to_end(tok: Any) -> None:
    rows = parse_rows([STD, *STD_ROWS], "s")
    pairs, _ = tokenize_rows(rows, tok, Limits(), "s")
    for side in ("right", "left"):
        check_pair_batch(collate_pairs(pairs, tok.pad_token_id, side), pairs, tok.pad_token_id)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- prepare_data

WORDS = [w for w in DEFAULT_WORDS if w.isalpha()]


def numbered_rows(n: int, tag: str = "tell") -> list[Row]:
    return [
        {"prompt": f"{tag} {WORDS[i]}", "chosen": " good", "rejected": " bad"} for i in range(n)
    ]


def prepare(data: Path, tok: Any, seed: int = 0, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "split": "train",
        "eval_data": None,
        "eval_split": "test",
        "eval_fraction": 0.25,
        "tokenizer": tok,
        "limits": Limits(),
        "seed": seed,
    }
    return prepare_data(str(data), **{**args, **kw})


def test_prepare_single_file_holds_out_a_seeded_fraction(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", numbered_rows(20))
    data = prepare(path, tok)
    train = {p.index for p in data.train}
    held = {p.index for p in data.eval}
    assert (len(train), len(held)) == (15, 5)
    assert train.isdisjoint(held) and train | held == set(range(20))
    assert sorted(r.index for r in data.eval_rows) == sorted(held)
    for r, p in zip(data.eval_rows, data.eval, strict=True):
        assert r.index == p.index
        assert p.prompt_ids == ids(tok, r.prompt)  # type: ignore[arg-type]
    assert [r.rows for r in data.reports] == [15, 5]
    assert {p.index for p in prepare(path, tok).eval} == held  # seeded
    assert {p.index for p in prepare(path, tok, seed=1).eval} != held
    tiny = prepare(path, tok, eval_fraction=0.01)
    assert len(tiny.eval) == 1 and len(tiny.train) == 19  # at least one eval row


def test_prepare_uses_the_test_split_of_a_json_file(tmp_path: Path, tok: Any) -> None:
    path = tmp_path / "splits.json"
    train_rows, test_rows = numbered_rows(12), numbered_rows(3, tag="describe")
    path.write_text(json.dumps({"train": train_rows, "test": test_rows}))
    data = prepare(path, tok)
    assert [p.index for p in data.train] == list(range(12))  # nothing held out
    assert [r.prompt for r in data.eval_rows] == [r["prompt"] for r in test_rows]
    assert [p.prompt_ids for p in data.eval] == [ids(tok, r["prompt"]) for r in test_rows]
    assert [r.rows for r in data.reports] == [12, 3]


def test_prepare_a_single_eval_file_is_its_own_eval_set(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", numbered_rows(8))
    other = write_jsonl(tmp_path / "eval.jsonl", numbered_rows(2, tag="write"))
    for eval_split in ("test", None, "validation"):  # 'test' is the config's default
        data = prepare(path, tok, eval_data=str(other), eval_split=eval_split)
        assert len(data.train) == 8  # nothing held out
        assert [r.prompt for r in data.eval_rows] == [
            r["prompt"] for r in numbered_rows(2, "write")
        ]
        assert [r.source for r in data.reports] == [f"{path}[train]", f"{other}[eval]"]
    listed = tmp_path / "eval.json"  # a JSON list of rows: one set, no splits either
    listed.write_text(json.dumps(numbered_rows(3, tag="write")))
    assert len(prepare(path, tok, eval_data=str(listed)).eval) == 3


def test_prepare_eval_data_with_splits_but_not_the_asked_one_is_an_error(
    tmp_path: Path, tok: Any
) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", numbered_rows(8))
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": numbered_rows(2), "validation": numbered_rows(2)}))
    with pytest.raises(NoSuchSplit, match="no split 'test'"):  # no silent hold-out
        prepare(path, tok, eval_data=str(splits))
    assert len(prepare(path, tok, eval_data=str(splits), eval_split="validation").eval) == 2


def test_prepare_eval_fraction_zero_means_no_eval_set(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", numbered_rows(8))
    data = prepare(path, tok, eval_fraction=0.0)
    assert len(data.train) == 8 and data.eval == [] and data.eval_rows == []
    assert [str(r) for r in data.reports] == [f"{path}[train]: 8 rows, kept 8"]
    one = write_jsonl(tmp_path / "one.jsonl", numbered_rows(1))
    assert len(prepare(one, tok, eval_fraction=0.0).train) == 1


def test_prepare_one_row_held_out_says_so(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "one.jsonl", numbered_rows(1))
    with pytest.raises(DataError, match=re.escape(f"{path}[train]: 1 row: all held out for eval;")):
        prepare(path, tok)


def test_prepare_overlong_truncate_keeps_the_rows(tmp_path: Path, tok: Any) -> None:
    rows = [{**r, "chosen": " good" * 20} for r in numbered_rows(8)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match="dropped 6 longer than max_length 8"):
        prepare(path, tok, limits=Limits(max_length=8))
    data = prepare(path, tok, limits=Limits(max_length=8, overlong="truncate"))
    assert [str(r) for r in data.reports] == [
        f"{path}[train]: 6 rows, kept 6; 6 truncated to max_length 8",
        f"{path}[eval]: 2 rows, kept 2; 2 truncated to max_length 8",
    ]
    assert all(len(p.prompt_ids) + len(p.chosen_ids) == 8 for p in data.train + data.eval)


# --------------------------------------------------------------------------- property test

# No special tokens: a literal one inside a reply is refused (test_bad_inputs, issue 13).
VOCAB = [w for w in DEFAULT_WORDS if w not in ("<eos>", "<bos>", "<pad>", "<unk>")]
vocab_text = st.lists(st.sampled_from(VOCAB), min_size=1, max_size=6).map(" ".join)

# well-formed rows, in each format
valid_std = st.fixed_dictionaries(
    {"prompt": vocab_text, "chosen": vocab_text, "rejected": vocab_text}
)
first_words = st.lists(st.sampled_from(WORDS), min_size=2, max_size=2, unique=True).filter(
    lambda w: not w[0].startswith(w[1]) and not w[1].startswith(w[0])  # e.g. 'cat' vs 'cats'
)  # (one response a prefix of the other leaves no usable split: a DataError, tested above)
valid_implicit = st.tuples(vocab_text, first_words, vocab_text, vocab_text).map(
    lambda t: {"chosen": f"{t[0]} {t[1][0]} {t[2]}", "rejected": f"{t[0]} {t[1][1]} {t[3]}"}
)
turns = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user"]), "content": vocab_text}),
    min_size=1,
    max_size=2,
)
reply = st.lists(
    st.fixed_dictionaries({"role": st.just("assistant"), "content": vocab_text}),
    min_size=1,
    max_size=2,
)
valid_conv = st.fixed_dictionaries({"prompt": turns, "chosen": reply, "rejected": reply})
valid_conv_implicit = (
    st.tuples(turns, reply, reply)
    .filter(lambda t: t[1][0] != t[2][0])
    .map(lambda t: {"chosen": t[0] + t[1], "rejected": t[0] + t[2]})
)
FORMATS = [valid_std, valid_implicit, valid_conv, valid_conv_implicit]

# junk: any unicode (incl. lone surrogates, as a "\ud800" JSON escape gives), wrong types
junk_text = st.text(st.characters(exclude_categories=()), max_size=8)
text = st.one_of(vocab_text, junk_text, st.sampled_from(["", " ", "\n", "<eos>"]))
scalar = st.one_of(st.integers(), st.floats(), st.booleans(), st.none())
role = st.one_of(st.sampled_from(ROLES), text, st.integers())
message = st.one_of(
    st.fixed_dictionaries({"role": role, "content": text}),
    st.fixed_dictionaries({"role": role}, optional={"content": st.one_of(text, scalar)}),
    text,
    scalar,
)
junk_value = st.one_of(
    text, scalar, st.lists(message, max_size=3), st.dictionaries(text, text, max_size=2)
)
junk_row = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"prompt": junk_value, "chosen": junk_value, "rejected": junk_value}
    ),
    text,
    scalar,
    st.lists(text, max_size=2),
)
KEYS = ["prompt", "chosen", "rejected", "extra"]


@st.composite
def messy_rows(draw: st.DrawFn) -> list[Any]:
    """Rows of one format, some of them damaged: a key dropped or replaced, a message broken,
    a junk row, or a row of another format."""
    fmt = draw(st.sampled_from(FORMATS))
    rows: list[Any] = []
    for _ in range(draw(st.integers(1, 4))):  # zero rows: test_empty_file
        damage = draw(st.sampled_from(["none"] * 5 + ["key", "message", "row"]))
        if damage == "row":
            rows.append(draw(st.one_of(junk_row, *FORMATS)))
            continue
        row = dict(draw(fmt))
        if damage == "key":
            key = draw(st.sampled_from(KEYS))
            if draw(st.booleans()):
                row.pop(key, None)
            else:
                row[key] = draw(junk_value)
        elif damage == "message":
            key = draw(st.sampled_from([k for k in KEYS if isinstance(row.get(k), list)] or KEYS))
            msgs = list(row.get(key) or [{}])
            i = draw(st.integers(0, len(msgs) - 1))
            broken = dict(msgs[i]) if isinstance(msgs[i], dict) else {}
            part = draw(st.sampled_from(["role", "content"]))
            if draw(st.booleans()):
                broken.pop(part, None)
            else:
                broken[part] = draw(st.one_of(text, scalar))
            msgs[i] = broken
            row[key] = msgs
        rows.append(row)
    return rows


def check_pipeline(rows: list[Any], limits: Limits) -> bool:
    """Parse, tokenize, collate; False if a DataError stopped it (any other error propagates)."""
    tok = _tokenizer()
    try:
        parsed = parse_rows(rows, "prop")
        pairs, report = tokenize_rows(parsed, tok, limits, "prop")
    except DataError:
        return False
    assert len(parsed) == len(rows)
    assert report.kept == len(pairs) > 0
    assert report.kept + report.identical + report.too_long == report.rows == len(rows)
    for p in pairs:
        assert len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) <= limits.max_length
        assert len(p.chosen_ids) >= 1 and len(p.rejected_ids) >= 1
        if limits.max_prompt_length is not None:
            assert len(p.prompt_ids) <= limits.max_prompt_length
    for side in ("right", "left"):
        check_pair_batch(collate_pairs(pairs, tok.pad_token_id, side), pairs, tok.pad_token_id)  # type: ignore[arg-type]
    return True


limits_strategy = st.builds(
    Limits,
    max_length=st.integers(4, 64),
    max_prompt_length=st.one_of(st.none(), st.integers(2, 12)),
    max_completion_length=st.one_of(st.none(), st.integers(2, 12)),
    prompt_truncation=st.sampled_from(["keep_end", "keep_start"]),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=messy_rows(), limits=limits_strategy)
def test_property_random_rows_succeed_or_raise_data_error(rows: list[Any], limits: Limits) -> None:
    event("pipeline ok" if check_pipeline(rows, limits) else "DataError")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.sampled_from(FORMATS).flatmap(lambda fmt: st.lists(fmt, min_size=1, max_size=4)),
    limits=limits_strategy,
)
def test_property_valid_rows_always_parse(rows: list[Row], limits: Limits) -> None:
    parsed = parse_rows(rows, "prop")  # never a DataError for well-formed rows
    assert [r.index for r in parsed] == list(range(len(rows)))
    if not check_pipeline(rows, limits):  # only "nothing usable left" may stop them
        with pytest.raises(DataError, match="no usable rows left"):
            tokenize_rows(parsed, _tokenizer(), limits, "prop")
    from gpo.data.tokenize import render_ids

    rendered = [render_ids(r, _tokenizer(), "prop") for r in parsed]
    if any(c != r for _, c, r in rendered):  # pairs equal as tokens are dropped (issue 13)
        assert check_pipeline(rows, Limits(max_length=10_000))


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(valid_implicit, min_size=1, max_size=3))
def test_property_implicit_prompt_matches_trl(rows: list[Row]) -> None:
    from trl.data_utils import extract_prompt

    for row, parsed in zip(rows, parse_rows(rows, "prop"), strict=True):
        expected = extract_prompt(row)
        assert (parsed.prompt, parsed.chosen, parsed.rejected) == (
            expected["prompt"],
            expected["chosen"],
            expected["rejected"],
        )


def test_unfinished_responses_get_no_eos():
    """``*_finished: false`` (gpo extension): no EOS/end-of-turn is added to a cut-off reply."""
    from gpo.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    eos = tok.eos_token_id
    std = {"prompt": "the cat", "chosen": " runs fast", "rejected": " is slow"}
    conv = {
        "prompt": [{"role": "user", "content": "the cat"}],
        "chosen": [{"role": "assistant", "content": "runs fast"}],
        "rejected": [{"role": "assistant", "content": "is slow"}],
    }
    for row in (std, conv):
        done, _ = tokenize_rows(parse_rows([row], "m"), tok, Limits(), "m")
        cut, _ = tokenize_rows(
            parse_rows([{**row, "rejected_finished": False}], "m"), tok, Limits(), "m"
        )
        assert done[0].rejected_ids[-1] == eos and done[0].rejected_ids.count(eos) == 1
        assert eos not in cut[0].rejected_ids
        assert cut[0].rejected_ids == done[0].rejected_ids[:-1]
        assert cut[0].chosen_ids == done[0].chosen_ids
    with pytest.raises(DataError, match=r"chosen_finished.*true or false"):
        parse_rows([{**std, "chosen_finished": "no"}], "m")


# --------------------------------------------------------------------------- issue 13, data


def test_csv_cells_are_read_as_text(tmp_path: Path) -> None:
    """'None', 'NA', 'null', 'nan' are answers, not missing values; '42' stays a string."""
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected\nq1,None,NA\nq2,42,nan\nq3,null,007\n")
    rows = load_rows(str(path))
    assert rows[0] == {"prompt": "q1", "chosen": "None", "rejected": "NA"}
    assert [r["chosen"] for r in rows] == ["None", "42", "null"] and rows[2]["rejected"] == "007"
    assert len(parse_rows(rows, str(path))) == 3


def test_column_oriented_json_is_read(tmp_path: Path) -> None:
    """As pandas writes it: to_json(orient='columns') (index dicts) or a dict of lists."""
    lists = {"prompt": ["a", "b"], "chosen": [" x", " y"], "rejected": [" z", " w"]}
    indexed = {k: {str(i): v for i, v in enumerate(vs)} for k, vs in lists.items()}
    for name, data in (("lists.json", lists), ("indexed.json", indexed)):
        path = tmp_path / name
        path.write_text(json.dumps(data))
        assert load_rows(str(path)) == [
            {"prompt": "a", "chosen": " x", "rejected": " z"},
            {"prompt": "b", "chosen": " y", "rejected": " w"},
        ]


def test_cr_only_line_endings_are_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\r".join(json.dumps(STD).encode() for _ in range(3)) + b"\r")
    assert len(load_rows(str(path))) == 3
    path.write_bytes(json.dumps(STD).encode() + b"\r{bad\r")
    with pytest.raises(DataError, match=r"p\.jsonl: line 2: malformed JSON"):
        load_rows(str(path))


def test_an_empty_prompt_starts_with_bos_or_is_refused() -> None:
    """With no prompt token, the first response token would never be scored."""
    tok = _tokenizer()
    rows = parse_rows([{"prompt": "", "chosen": " good cat", "rejected": " bad cat"}], "e")
    (pair,), _ = tokenize_rows(rows, tok, Limits(max_length=64), "e")
    assert pair.prompt_ids == [tok.bos_token_id]
    assert pair.chosen_ids[0] != tok.bos_token_id
    tok.bos_token = None
    with pytest.raises(DataError, match="e: row 1, field 'prompt': empty, and the tokenizer"):
        tokenize_rows(rows, tok, Limits(max_length=64), "e")
