"""``gpo data check FILE``: format found, rows kept/dropped and why, token lengths, and pairs
rendered as the model sees them, with the same limit flags as ``gpo train``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from gpo.cli import main
from gpo.data.check import percentile
from gpo.data.tokenize import Limits
from gpo.train.config import TrainConfig


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def std(i: int, **kw: Any) -> dict[str, Any]:
    words = ["cat", "dog", "sun", "moon", "tree", "bird", "sky", "sea"]
    w = words[i % len(words)]
    return {
        "prompt": f"tell me about the {w}",
        "chosen": f" good {w}",
        "rejected": f" bad {w}",
        **kw,
    }


def conv(i: int) -> dict[str, Any]:
    row = std(i)
    return {
        "prompt": [msg("user", row["prompt"])],
        "chosen": [msg("assistant", row["chosen"].strip())],
        "rejected": [msg("assistant", row["rejected"].strip())],
    }


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check(capsys: pytest.CaptureFixture[str], model: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["data", "check", *args, "--model", str(model)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_a_good_standard_file(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write(tmp_path / "prefs.jsonl", [std(i, score=1) for i in range(8)])
    code, out, err = check(capsys, tiny_model_dir, str(data), "--examples", "2")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert f"source: {data}[train]" in lines
    assert "format: standard (prompt/chosen/rejected strings), explicit prompt" in lines
    assert "other fields (not used): score" in lines
    assert "rows: 8, valid 8, invalid 0" in lines
    assert f"tokenized: {data}[train]: 8 rows, kept 8" in lines
    assert "tokens per pair, before truncation (8 pairs):" in lines
    assert lines[lines.index("tokens per pair, before truncation (8 pairs):") + 1].split() == [
        "p50",
        "p90",
        "p99",
        "max",
    ]
    # prompt 'tell me about the cat' = 5 words; replies 'good cat' + EOS = 3 tokens
    assert "  prompt                       5       5       5       5" in lines
    assert "  prompt + longer reply        8       8       8       8" in lines
    assert "example 1 (row 1), as the model sees it:" in lines
    assert "example 3 (row 3), as the model sees it:" not in lines
    first = lines.index("example 1 (row 1), as the model sees it:")
    assert lines[first + 1 : first + 7] == [
        "  prompt:",
        "    tell me about the cat",
        "  chosen:",
        "    good cat <eos>",  # the EOS training appends
        "  rejected:",
        "    bad cat <eos>",
    ]


def test_conversational_rows_are_shown_through_the_chat_template(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write(tmp_path / "chat.jsonl", [conv(i) for i in range(4)])
    code, out, _ = check(capsys, tiny_model_dir, str(data), "--examples", "1")
    assert code == 0
    assert "format: conversational (message lists, rendered with the chat template)" in out
    assert "    <bos> user : tell me about the cat <eos> <bos> assistant :\n" in out


def test_implicit_prompt_is_named(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"chosen": f"the {w} is good", "rejected": f"the {w} is bad"} for w in ("cat", "dog")]
    code, out, _ = check(capsys, tiny_model_dir, str(write(tmp_path / "i.jsonl", rows)))
    assert code == 0
    assert "implicit prompt (the shared start of chosen and rejected)" in out


def test_every_bad_row_is_listed_and_the_exit_is_what_training_would_say(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [std(0), std(1, chosen=None), std(2), ["a", "b"], std(4, rejected=" good tree")]
    data = write(tmp_path / "prefs.jsonl", rows)
    code, out, err = check(capsys, tiny_model_dir, str(data))
    assert code == 2
    assert "rows: 5, valid 3, invalid 2" in out
    assert "invalid rows (training stops at the first):" in out
    assert f"  {data}[train]: row 2, field 'chosen': is null (expected a string)\n" in out
    assert f"  {data}[train]: row 4: is a JSON array, not an object" in out
    # the valid rows are still measured; the identical pair is dropped and counted
    assert f"tokenized: {data}[train]: 3 rows, kept 2; dropped 1 with chosen == rejected" in out
    assert err == f"gpo: error: {data}[train]: row 2, field 'chosen': is null (expected a string)\n"


def test_limit_flags_as_in_training(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write(tmp_path / "prefs.jsonl", [std(i) for i in range(4)] + [std(9, chosen=" a" * 20)])
    code, out, _ = check(capsys, tiny_model_dir, str(data), "--max-length", "10")
    assert code == 0
    assert (
        "4 rows, kept 4" not in out
        and "5 rows, kept 4; dropped 1 longer than max_length 10 "
        "(set overlong=truncate to keep them)"
        in out
    )
    code, out, _ = check(
        capsys, tiny_model_dir, str(data), "--max-length", "10", "--overlong", "truncate"
    )
    assert code == 0 and "5 rows, kept 5; 1 truncated to max_length 10" in out
    assert "  prompt + longer reply        8      26      26      26" in out  # before truncation
    code, out, err = check(capsys, tiny_model_dir, str(data), "--max-length", "3")
    assert code == 2 and err.startswith("gpo: error: no usable rows left: ")


def test_an_unreadable_source_fails_before_the_tokenizer_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.jsonl"
    code, _, err = check(capsys, tmp_path / "no-model", str(missing))
    assert (code, err) == (2, f"gpo: error: {missing}: no such file or folder\n")
    code, _, err = check(capsys, tmp_path / "no-model", str(write(tmp_path / "e.jsonl", [])))
    assert code == 2 and err.endswith("e.jsonl[train]: no rows\n")
    code, _, err = check(capsys, tmp_path / "no-model", str(write(tmp_path / "p.jsonl", [std(0)])))
    assert (code, err) == (2, f"gpo: error: model path {tmp_path / 'no-model'} does not exist\n")


def test_a_bad_model_is_one_line(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write(tmp_path / "prefs.jsonl", [std(0)])
    (tmp_path / "empty").mkdir()
    code, _, err = check(capsys, tmp_path / "empty", str(data))
    assert code == 2
    assert err.startswith(f"gpo: error: cannot load the tokenizer of model '{tmp_path / 'empty'}'")
    assert err.count("\n") == 1


def test_limits_defaults_are_the_training_defaults() -> None:
    """max_length is None in both commands' flags: min(1024, the model's limit), resolved by
    gpo.models.positions.resolve_max_length; Limits' own default is that 1024."""
    from gpo.models.positions import DEFAULT_MAX_LENGTH

    train = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert train["max_length"] is None
    for f in dataclasses.fields(Limits):
        expected = DEFAULT_MAX_LENGTH if f.name == "max_length" else train[f.name]
        assert f.default == expected, f.name


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7], 50) == 7 and percentile([3, 1, 2], 100) == 3
