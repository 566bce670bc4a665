"""Bad input to ``gpo train``: each case exits non-zero with ONE line on stderr that names the file,
row and field where there is one, and no traceback (unless ``--debug``).

Run in-process through ``gpo.cli.main`` (fast); each case writes its own data/config files.
"""

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gpo.cli import build_parser, main
from gpo.cli.flags import values_from_args
from gpo.io import write_json
from gpo.train.config import TrainConfig, load_config

WORDS = ["the", "cat", "dog", "sun", "moon", "tree", "bird", "sky", "sea", "rain"]


def std(i: int, **kw: Any) -> dict[str, Any]:
    w = WORDS[i % len(WORDS)]
    return {
        "prompt": f"tell me about the {w}",
        "chosen": " good " + w,
        "rejected": " bad " + w,
        **kw,
    }


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def conv(i: int) -> dict[str, Any]:
    w = WORDS[i % len(WORDS)]
    return {
        "prompt": [msg("user", f"tell me about the {w}")],
        "chosen": [msg("assistant", "good " + w)],
        "rejected": [msg("assistant", "bad " + w)],
    }


def jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


GOOD = jsonl([std(i) for i in range(8)])


@dataclass
class Case:
    id: str
    expect: list[str]  # fragments of the one stderr line ('{data}' / '{out}' are filled in)
    data: str | bytes = GOOD  # contents of the data file
    name: str = "prefs.jsonl"
    args: list[str] = field(default_factory=list)  # extra flags; '{tmp}' is filled in
    config: str | None = None  # a YAML config file's text
    model: str = "tiny"  # 'tiny', 'no_template' or a path fragment under tmp
    setup: Callable[[Path, list[str]], None] | None = None


def _resume_setup(tmp: Path, argv: list[str]) -> None:
    """A run folder made with beta 0.1; the case resumes it with beta 0.2."""
    base = [a for a in argv if a not in ("--resume",)]
    base = base[: base.index("--beta")] if "--beta" in base else base
    cfg = load_config(None, values_from_args(build_parser().parse_args(base), TrainConfig))
    out = Path(cfg.out or "")
    out.mkdir(parents=True)
    write_json(out / "config.json", cfg)


CASES = [
    # ---- data files
    Case(
        "malformed_json",
        ["{data}: line 3: malformed JSON"],
        data=jsonl([std(0), std(1)]) + '{"prompt": "x",\n',
    ),
    Case(
        "non_utf8_bytes",
        ["{data}: line 2: not valid UTF-8"],
        data=jsonl([std(0)]).encode() + b'{"prompt": "\xff\xfe"}\n',
    ),
    Case(
        "wrong_type_chosen",
        ["row 3, field 'chosen'", "expected a string", "got int"],
        data=jsonl([std(0), std(1), std(2, chosen=5)]),
    ),
    Case(
        "wrong_type_prompt_list_in_standard_file",
        ["row 2: prompt is a message list but chosen is a string: mixed formats in one row"],
        data=jsonl([std(0), std(1, prompt=[msg("user", "hi")])]),
    ),
    Case(
        "list_prompt_string_replies_in_the_first_row",
        ["row 1: prompt is a message list but chosen is a string: mixed formats in one row"],
        data=jsonl([std(0, prompt=[msg("user", "hi")])] + [std(i) for i in range(1, 8)]),
    ),
    Case(
        "string_prompt_message_replies",
        ["row 1: prompt is a string but chosen is a message list: mixed formats in one row"],
        data=jsonl([{**conv(0), "prompt": "hi"}] + [conv(i) for i in range(1, 8)]),
    ),
    Case(
        "message_chosen_string_rejected",
        ["row 3: prompt is a message list but rejected is a string: mixed formats in one row"],
        data=jsonl([conv(0), conv(1), {**conv(2), "rejected": "bad"}]),
    ),
    Case(
        "empty_response",
        ["row 2, field 'rejected': empty or whitespace-only response"],
        data=jsonl([std(0), std(1, rejected="")]),
    ),
    Case(
        "whitespace_only_response",
        ["row 1, field 'chosen': empty or whitespace-only response"],
        data=jsonl([std(0, chosen=" \n\t ")]),
    ),
    Case(
        "missing_field",
        ["row 2, field 'rejected': missing (fields present: chosen, prompt)"],
        data=jsonl([std(0), {"prompt": "a", "chosen": "b"}]),
    ),
    Case(
        "null_field",
        ["row 1, field 'chosen': is null (expected a string)"],
        data=jsonl([std(0, chosen=None)]),
    ),
    Case(
        "null_field_in_conversational_data",
        ["row 2, field 'rejected': is null (expected a list of messages)"],
        data=jsonl([conv(0), {**conv(1), "rejected": None}]),
    ),
    Case(
        "json_array_line_in_jsonl",
        ["{data}[train]: row 1: is a JSON array, not an object with 'chosen' and 'rejected'"],
        data=jsonl([["tell me", "good", "bad"]]) + GOOD,
    ),
    Case(
        "json_array_later_line_in_jsonl",
        ["{data}[train]: row 3: is a JSON array, not an object with 'chosen' and 'rejected'"],
        data=jsonl([std(0), std(1), ["tell me", "good", "bad"]]),
    ),
    Case(
        "one_row_file_is_all_held_out",
        ["{data}[train]: 1 row: all held out for eval; give --eval-data or more rows"],
        data=jsonl([std(0)]),
    ),
    Case(
        "bad_row_in_a_single_eval_file",  # read at all: --eval-data FILE.jsonl is its own eval set
        ["{tmp}/eval.jsonl: row 2, field 'chosen': is null (expected a string)"],
        args=["--eval-data", "{tmp}/eval.jsonl"],
        setup=lambda tmp, argv: (tmp / "eval.jsonl").write_text(
            jsonl([std(0), std(1, chosen=None)])
        ),
    ),
    Case(
        "eval_file_with_splits_but_not_the_asked_one",
        ["{tmp}/eval.json: no split 'test' (top-level keys: train, validation)"],
        args=["--eval-data", "{tmp}/eval.json"],
        setup=lambda tmp, argv: (tmp / "eval.json").write_text(
            json.dumps({"train": [std(0)], "validation": [std(1)]})
        ),
    ),
    Case(
        "implicit_prompt_no_common_prefix",
        ["row 2: no 'prompt' field and chosen/rejected share no common prefix"],
        data=jsonl(
            [{"chosen": "a cat", "rejected": "a dog"}, {"chosen": "cat", "rejected": "dog"}]
        ),
    ),
    Case(
        "implicit_prompt_response_is_prefix",
        ["row 1, field 'chosen': no 'prompt' field, and chosen is a prefix of rejected"],
        data=jsonl([{"chosen": "the cat", "rejected": "the cat runs"}]),
    ),
    Case(
        "unknown_role",
        ["row 2, field 'chosen': message 1 has unknown role 'robot'"],
        data=jsonl([conv(0), {**conv(1), "chosen": [msg("robot", "beep")]}]),
    ),
    Case(
        "final_message_not_from_assistant",
        ["row 1, field 'rejected': the last message must be from the assistant, got 'user'"],
        data=jsonl([{**conv(0), "rejected": [msg("assistant", "x"), msg("user", "y")]}]),
    ),
    Case(
        "message_content_not_a_string",
        ["row 1, field 'prompt': message 1 content must be a string, got int"],
        data=jsonl([{**conv(0), "prompt": [{"role": "user", "content": 5}]}]),
    ),
    Case(
        "mixed_formats_in_one_file",
        ["row 2, field 'chosen'", "expected a string like the first row, got list", "mixed"],
        data=jsonl([std(0), conv(1)]),
    ),
    Case(
        "lone_surrogate_escape",
        ["row 1, field 'prompt': not valid Unicode text"],
        data='{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}\n',
    ),
    Case(
        "row_not_an_object",
        ["row 2: is a JSON number, not an object with 'chosen' and 'rejected' fields"],
        data=jsonl([std(0)]) + "42\n",
    ),
    Case(
        "finished_flag_not_bool",
        ["row 1, field 'chosen_finished': expected true or false, got 'no'"],
        data=jsonl([std(0, chosen_finished="no")]),
    ),
    Case("empty_file", ["{data}[train]: no rows"], data=""),
    Case(
        "json_object_not_rows",
        ["no split 'train' (top-level keys: rows)"],
        data=json.dumps({"rows": 3}),
        name="prefs.json",
    ),
    Case(
        "csv_wrong_columns",
        ["row 1, field 'chosen': missing (is this preference data?)"],
        data="question,answer\nwhat,that\n",
        name="prefs.csv",
    ),
    Case(
        "corrupt_parquet",
        ["{data}: cannot read as parquet"],
        data=b"PAR1 this is not parquet",
        name="prefs.parquet",
    ),
    Case("unsupported_suffix", ["{data}: unsupported file type"], name="prefs.txt"),
    Case(
        "missing_data_file",
        ["{tmp}/nope.jsonl: no such file or folder"],
        args=["--data", "{tmp}/nope.jsonl"],
    ),
    Case(
        "missing_eval_file",
        ["{tmp}/nope.jsonl: no such file or folder"],
        args=["--eval-data", "{tmp}/nope.jsonl"],
    ),
    Case(
        "split_of_single_file",
        ["a single file has no split 'validation'"],
        args=["--split", "validation"],
    ),
    # ---- filtering leaves nothing
    Case(
        "empty_after_filtering_identical",
        ["no usable rows left", "dropped 7 with chosen == rejected"],
        data=jsonl([std(i, rejected=std(i)["chosen"]) for i in range(8)]),
    ),
    Case(
        "max_length_smaller_than_every_prompt",
        ["no usable rows left", "longer than max_length 3 (set overlong=truncate to keep them)"],
        args=["--max-length", "3"],
    ),
    Case(
        "huge_rows_only",
        ["no usable rows left", "dropped 3 longer than max_length", "set overlong=truncate"],
        data=jsonl([std(i, chosen=" good" * 100_000) for i in range(4)]),
    ),
    Case(
        "batch_larger_than_data", ["fewer than one global batch of 64"], args=["--batch-size", "64"]
    ),
    # ---- config values and files
    Case("beta_zero", ["config: beta = 0.0 is out of range"], args=["--beta", "0"]),
    Case("beta_negative", ["config: beta = -1.0 is out of range"], args=["--beta", "-1"]),
    Case("beta_nan", ["config: beta = nan is out of range"], args=["--beta", "nan"]),
    Case(
        "unknown_loss", ["unknown loss 'nope': valid names are logistic"], args=["--loss", "nope"]
    ),
    Case(
        "loss_with_nonnegative_slope_at_0",
        ["f'(0)", "user_losses:increasing"],
        args=["--loss", "user_losses:increasing"],
    ),
    Case("loss_module_missing", ["cannot import module 'nomod'"], args=["--loss", "nomod:f"]),
    Case(
        "yaml_unknown_key_suggests",
        ["{tmp}/c.yaml: unknown key 'bta' (did you mean 'beta'?)"],
        config="bta: 0.1\n",
    ),
    Case("yaml_wrong_type", ["config: beta must be float, got str 'high'"], config="beta: high\n"),
    Case("yaml_syntax", ["{tmp}/c.yaml: invalid YAML"], config="beta: [0.1\n"),
    Case("yaml_not_a_mapping", ["expected a mapping of keys to values"], config="- beta\n"),
    Case(
        "config_file_missing",
        ["config file {tmp}/none.yaml does not exist"],
        args=["--config", "{tmp}/none.yaml"],
    ),
    Case(
        "max_prompt_length_too_small",
        ["max_prompt_length must be at least 2, got 1"],
        args=["--max-prompt-length", "1"],
    ),
    # ---- model, tokenizer, run folder
    Case("model_path_missing", ["model path {tmp}/no-model does not exist"], model="no-model"),
    Case("model_folder_not_a_model", ["cannot load model", "{tmp}/empty"], model="empty"),
    Case(
        "no_chat_template_for_conversational_data",
        ["conversational data needs a tokenizer with a chat template"],
        data=jsonl([conv(i) for i in range(8)]),
        model="no_template",
    ),
    Case(
        "resume_from_a_different_config",
        ["refusing to resume {out}: config differs (beta: 0.1 -> 0.2)"],
        args=["--resume", "--beta", "0.2"],
        setup=_resume_setup,
    ),
    Case("out_is_a_file", ["run folder {data}: cannot write there"], args=["--out", "{data}"]),
    # ---- issue 13: messages, replies, file formats, run folders, config values
    Case(
        "message_extra_key_tool_calls",
        ["row 2, field 'chosen': message 1 has 'tool_calls': gpo trains on role and content only"],
        data=jsonl(
            [conv(0), {**conv(1), "chosen": [{**msg("assistant", "x"), "tool_calls": [{}]}]}]
        ),
    ),
    Case(
        "message_content_null",
        ["row 1, field 'prompt': message 1 content is null; only text content is supported"],
        data=jsonl([{**conv(0), "prompt": [{"role": "user", "content": None}]}]),
    ),
    Case(
        "message_content_multimodal_parts",
        ["row 1, field 'prompt': message 1 content is a list of parts (multimodal?)"],
        data=jsonl([{**conv(0), "prompt": [msg("user", [{"type": "text", "text": "hi"}])]}]),  # type: ignore[arg-type]
    ),
    Case(
        "role_developer",
        ["row 1, field 'prompt': message 1 has unknown role 'developer'"],
        data=jsonl([{**conv(0), "prompt": [msg("developer", "be brief")]}]),
    ),
    Case(
        "role_function",
        ["row 1, field 'prompt': message 2 has unknown role 'function'"],
        data=jsonl([{**conv(0), "prompt": [msg("user", "hi"), msg("function", "{}")]}]),
    ),
    Case(
        "chosen_repeats_the_prompt",
        ["row 1, field 'chosen': repeats the whole prompt (its first 1 message(s))"],
        data=jsonl([{**conv(0), "chosen": conv(0)["prompt"] + conv(0)["chosen"]}]),
    ),
    Case(
        "special_token_inside_a_reply",
        ["row 2, field 'chosen': contains the special token '<eos>'", "cut the reply short"],
        data=jsonl([std(0), std(1, chosen=" good <eos> more")]),
    ),
    Case(
        "json_trailing_comma",
        ["{data}: line 4: malformed JSON"],
        data="[\n" + ",\n".join(json.dumps(std(i)) for i in range(2)) + ",\n]\n",
        name="prefs.json",
    ),
    Case(
        "column_json_of_unequal_lengths",
        [
            "{data}: column-oriented JSON needs one list per field, all of one length",
            "(got prompt: 2, chosen: 1, rejected: 2)",
        ],
        data=json.dumps({"prompt": ["a", "b"], "chosen": ["x"], "rejected": ["y", "z"]}),
        name="prefs.json",
    ),
    Case(
        "csv_row_with_missing_cells",
        ["{data}: row 2: 2 cells, but the header has 3 (prompt, chosen, rejected)"],
        data="prompt,chosen,rejected\nhi,good,bad\nhi,good\n",
        name="prefs.csv",
    ),
    Case(
        "identical_once_truncated",
        ["no usable rows left", "kept 0; dropped 7 with chosen == rejected; truncated 7"],
        data=jsonl([std(i, chosen=" the cat good", rejected=" the cat bad") for i in range(8)]),
        args=["--max-completion-length", "2"],
    ),
    Case(
        "max_length_above_the_model_positions",
        ["config: max_length = 4096 is more than model", "max_position_embeddings (2048)"],
        args=["--max-length", "4096"],
    ),
    Case(
        "out_already_holds_a_run",
        ["run folder {out} already holds a run (config.json, metrics.jsonl)", "--overwrite"],
        setup=lambda tmp, argv: (
            (tmp / "run").mkdir(),
            (tmp / "run" / "config.json").write_text("{}"),
            (tmp / "run" / "metrics.jsonl").write_text(""),
            (tmp / "run" / ".gpo-run.jsonl").write_text(
                '{"path": "config.json", "kind": "file"}\n'
                '{"path": "metrics.jsonl", "kind": "file"}\n'
            ),
        ),
    ),
    Case(
        "out_holds_files_no_run_wrote",
        ["run folder {out} has checkpoints, which no gpo run recorded writing", "choose another"],
        args=["--overwrite"],
        setup=lambda tmp, argv: (
            (tmp / "run" / "checkpoints").mkdir(parents=True),
            (tmp / "run" / "checkpoints" / "my.bin").write_text("y"),
        ),
    ),
    Case(
        "resume_and_overwrite",
        ["config: resume and overwrite contradict each other"],
        args=["--resume", "--overwrite"],
    ),
    Case("lora_rank_zero", ["config: lora_r = 0 is out of range"], args=["--lora-r", "0"]),
    Case(
        "lora_dropout_one",
        ["config: lora_dropout = 1.0 is out of range"],
        args=["--lora-dropout", "1"],
    ),
    Case(
        "eval_fraction_one",
        ["config: eval_fraction = 1.0 is out of range"],
        args=["--eval-fraction", "1"],
    ),
    Case(
        "weight_decay_inf",
        ["config: weight_decay = inf is out of range"],
        args=["--weight-decay", "inf"],
    ),
    Case(
        "max_grad_norm_nan",
        ["config: max_grad_norm = nan is out of range"],
        args=["--max-grad-norm", "nan"],
    ),
    Case(
        "unknown_judge",
        ["unknown judge 'nope'; valid judges: gold, local, http, vader"],
        data=jsonl([std(i) for i in range(40)]),
        args=["--judge", "nope", "--judge-prompts", "1", "--max-new-tokens", "2"],
    ),
]


@pytest.fixture(scope="module")
def no_template_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("no-template")
    shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def _argv(case: Case, tmp: Path, model: Path, data: Path) -> list[str]:
    argv = [
        "train",
        "--model", str(model),
        "--data", str(data),
        "--out", str(tmp / "run"),
        "--finetune", "full",
        "--batch-size", "2",
        "--max-steps", "1",
        "--eval-steps", "0",
        "--kl-prompts", "0",
        "--save-steps", "0",
        "--save-final", "false",
        "--progress", "false",
        "--report-to", "none",
    ]  # fmt: skip
    if case.config is not None:
        (tmp / "c.yaml").write_text(case.config)
        argv += ["--config", str(tmp / "c.yaml")]
    return argv + [a.replace("{tmp}", str(tmp)).replace("{data}", str(data)) for a in case.args]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_line(
    case: Case,
    tmp_path: Path,
    tiny_model_dir: Path,
    no_template_model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / case.name
    if isinstance(case.data, bytes):
        data.write_bytes(case.data)
    else:
        data.write_text(case.data)
    model = {"tiny": tiny_model_dir, "no_template": no_template_model}.get(case.model)
    if model is None:
        model = tmp_path / case.model
        if case.model == "empty":
            model.mkdir()
    argv = _argv(case, tmp_path, model, data)
    if case.setup is not None:
        case.setup(tmp_path, argv)
    code, out, err = _run(argv, capsys)
    assert code == 2  # the CLI's exit code for every error (docs/reliability.md)
    line = err.strip()
    assert line.startswith("gpo: error: "), err
    assert "\n" not in line, f"more than one line on stderr:\n{err}"
    assert "Traceback" not in out + err
    for fragment in case.expect:
        fragment = fragment.format(data=data, out=tmp_path / "run", tmp=tmp_path)
        assert fragment in line, f"{fragment!r} not in {line!r}"


def test_debug_flag_shows_the_traceback(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "prefs.jsonl"
    data.write_text(jsonl([std(0, chosen=5)]))
    argv = _argv(Case("x", []), tmp_path, tiny_model_dir, data)
    from gpo.data.formats import DataError

    with pytest.raises(DataError, match="row 1, field 'chosen'"):
        main(["--debug", *argv])


def test_one_huge_row_is_dropped_and_counted_not_fatal(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, held_out = tmp_path / "prefs.jsonl", tmp_path / "eval.jsonl"
    data.write_text(jsonl([std(i) for i in range(20)] + [std(99, chosen=" good" * 50_000)]))
    held_out.write_text(GOOD)
    argv = _argv(Case("x", []), tmp_path, tiny_model_dir, data)
    code, out, err = _run([*argv, "--eval-data", str(held_out), "--eval-split", "train"], capsys)
    assert code == 0, err
    assert f"data: {data}[train]: 21 rows, kept 20; dropped 1 longer than max_length" in out
    assert "(set overlong=truncate to keep them)" in out


def test_duplicate_pairs_are_kept_and_reported(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "prefs.jsonl"
    data.write_text(jsonl([std(i) for i in range(8)] * 2))
    argv = _argv(Case("x", []), tmp_path, tiny_model_dir, data)
    code, out, err = _run([*argv, "--eval-data", str(data), "--eval-split", "train"], capsys)
    assert code == 0, err
    assert "rows, kept 16; 8 duplicate pairs (kept)" in out


def test_a_single_eval_file_is_its_own_eval_set(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, held_out = tmp_path / "prefs.jsonl", tmp_path / "eval.jsonl"
    data.write_text(GOOD)
    held_out.write_text(jsonl([std(i) for i in range(3)]))
    argv = _argv(Case("x", []), tmp_path, tiny_model_dir, data)  # eval_split: its default 'test'
    code, out, err = _run([*argv, "--eval-data", str(held_out)], capsys)
    assert code == 0, err
    assert f"data: {data}[train]: 8 rows, kept 8\n" in out  # nothing held out of the training set
    assert f"data: {held_out}[eval]: 3 rows, kept 3\n" in out


def test_overlong_truncate_keeps_the_rows_and_says_so(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "prefs.jsonl"
    data.write_text(jsonl([std(i) for i in range(10)] + [std(99, chosen=" good" * 50_000)]))
    argv = _argv(Case("x", []), tmp_path, tiny_model_dir, data)
    argv += ["--eval-data", str(data), "--eval-split", "train", "--overlong", "truncate"]
    code, out, err = _run([*argv, "--max-length", "64"], capsys)
    assert code == 0, err
    assert f"data: {data}[train]: 11 rows, kept 11; 1 truncated to max_length 64\n" in out
