"""Prompt-only data (TRL's ``{"prompt": ...}`` rows) for ``gpo train --online`` (issue 31):
accepted online, standard and conversational, refused offline in one line; held-out prompts
still give KL, with no pair metrics (gpo.data.prompts)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from gpo.data.formats import DataError
from gpo.data.prepare import prepare_data
from gpo.data.prompts import parse_source, tokenize_prompts
from gpo.data.sources import load_rows
from gpo.data.tokenize import Limits
from gpo.train.online import ONLINE_PAIRS
from gpo.train.trainer import train

FAST = {"online": True, "max_new_tokens": 6, "eval_steps": 0}
WORDS = ("sea", "rain", "tree", "stone", "river", "cloud", "light", "song")


def _prompts(n: int, conversational: bool) -> list[dict[str, Any]]:
    rng = random.Random(n)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(2, 5))) for _ in range(n)]
    if conversational:
        return [{"prompt": [{"role": "user", "content": t}]} for t in texts]
    return [{"prompt": t} for t in texts]


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / ONLINE_PAIRS).read_text().splitlines()]


@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
def test_an_online_run_trains_on_prompt_only_rows(
    tiny_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], conversational: bool
) -> None:
    rows = _prompts(16, conversational)
    data = _write(tmp_path / "prompts.jsonl", rows)
    evals = {"eval_steps": 2, "eval_fraction": 0.25, "kl_prompts": 2, "kl_samples": 1}
    evals.update(judge_prompts=2, judge="online_judges:always_first")
    summary = train(tiny_config("run", data=str(data), max_steps=2, **{**FAST, **evals}))
    assert math.isfinite(summary["train"]["loss"]) and summary["online"] is True
    pairs = _rows(tmp_path / "run")
    assert len(pairs) == 8
    prompts = [r["prompt"] for r in rows]
    for row in pairs:
        assert row["prompt"] in prompts and {"chosen", "rejected", "score"} <= set(row)
        assert isinstance(row["chosen"], list if conversational else str)
    # Held-out prompts: KL measured, no pair metrics (there are no held-out pairs).
    assert "eval/kl" in summary["eval"] and math.isfinite(summary["eval"]["eval/kl"])
    assert summary["eval"]["eval/win_rate"] == 1.0  # always_first: the policy's sample first
    assert not any(k.startswith("eval/loss") or "accuracies" in k for k in summary["eval"])
    out = capsys.readouterr().out
    assert "no held-out pair metrics (prompt-only data), KL on 2 prompts x 1 sample" in out
    assert "online (judge gold, hard labels)" in out
    assert "eval at step 2: KL " in out


def test_offline_training_refuses_prompt_only_rows_in_one_line(
    tiny_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gpo.cli import main

    data = _write(tmp_path / "prompts.jsonl", _prompts(8, False))
    cfg = tiny_config("run", data=str(data))
    argv = ["train", "--model", cfg.model, "--data", str(data), "--out", cfg.out]
    argv += ["--max-steps", "1", "--progress", "false", "--report-to", "none"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "prompt-only rows (a 'prompt' and no 'chosen'/'rejected')" in err
    assert "pass --online" in err


def test_prompt_only_sources_load_as_preference_data_does(tmp_path: Path) -> None:
    """A .json list and a saved ``datasets`` dataset (the ``load_dataset`` path) load too."""
    from datasets import Dataset

    rows = _prompts(10, False)
    listed = tmp_path / "prompts.json"
    listed.write_text(json.dumps(rows))
    saved = tmp_path / "saved"
    Dataset.from_list(rows).save_to_disk(str(saved))

    for source in (listed, saved):
        parsed, prompt_only = parse_source(load_rows(str(source), None), str(source), True)
        assert prompt_only and [r.prompt for r in parsed] == [r["prompt"] for r in rows]


def test_prepare_and_limits(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = _write(tmp_path / "p.jsonl", _prompts(12, False))
    prepared = prepare_data(str(data), "train", None, None, 0.25, tokenizer, Limits(64), 0, True)
    assert len(prepared.train) == 9 and len(prepared.eval) == 3 and not prepared.eval_pairs
    assert all(p.prompt_ids and not p.chosen_ids and not p.rejected_ids for p in prepared.train)
    assert [r.index for r in prepared.train_rows] == [p.index for p in prepared.train]
    with pytest.raises(DataError, match="offline training needs preference pairs"):
        prepare_data(str(data), "train", None, None, 0.25, tokenizer, Limits(64), 0)
    rows, _ = parse_source([{"prompt": "sea " * 20}, {"prompt": "rain"}], "x", True)
    pairs, report = tokenize_prompts(rows, tokenizer, Limits(8), "x")
    assert [p.index for p in pairs] == [1] and report.too_long == 1
    pairs, report = tokenize_prompts(rows, tokenizer, Limits(8, overlong="truncate"), "x")
    assert len(pairs[0].prompt_ids) == 7 and report.fitted == 1  # room for one sampled token


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"prompt": "a"}, {"prompt": "b", "chosen": "c"}], r"row 2: has 'chosen'/'rejected'"),
        ([{"prompt": "a"}, {"prompt": " "}], r"row 2, field 'prompt': empty or whitespace-only"),
        ([{"prompt": "a"}, {"prompt": [{"role": "user", "content": "b"}]}], "expected a string"),
        ([{"prompt": "a"}, ["b"]], r"row 2: is a JSON array, not an object with a 'prompt'"),
    ],
)
def test_bad_prompt_only_rows_are_named(rows: list[Any], match: str) -> None:
    with pytest.raises(DataError, match=match):
        parse_source(rows, "src", True)


def test_held_out_prompt_only_rows_beside_preference_rows(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    held = _write(tmp_path / "held.jsonl", _prompts(5, True))
    args = (tokenizer, Limits(64), 0, True)
    prepared = prepare_data(str(tiny_data_file), "train", str(held), None, 0.1, *args)
    assert len(prepared.train) == 48 and prepared.train[0].chosen_ids  # the data's pairs
    assert len(prepared.eval) == 5 and not prepared.eval_pairs
    assert prepare_data(str(tiny_data_file), "train", None, None, 0.1, *args).eval_pairs


def test_data_check_takes_prompt_only_rows_with_online(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gpo.cli import main

    rows = _prompts(6, False)
    data = _write(tmp_path / "prompts.jsonl", [*rows[:5], {"prompt": ""}])
    argv = ["data", "check", str(data), "--model", str(tiny_model_dir), "--examples", "1"]
    capsys.readouterr()
    assert main([*argv, "--online"]) == 2  # the empty prompt: what training would stop with
    out, err = capsys.readouterr()
    assert "format: prompt-only, standard (strings): for gpo train --online" in out
    assert "rows: 6, valid 5, invalid 1" in out and "tokens per prompt" in out
    assert "  prompt:" in out and "  chosen:" not in out
    assert "row 6, field 'prompt': empty" in err
    _write(data, rows)
    assert main([*argv, "--online"]) == 0
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "prompt-only rows" in err and "pass --online" in err
