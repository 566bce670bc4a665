"""The training config: defaults, YAML loading and checks, CLI flags derived from the dataclass."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import pytest

from gpo.cli.flags import add_dataclass_flags, field_comments, values_from_args
from gpo.train.config import TrainConfig, load_config

FIELDS = dataclasses.fields(TrainConfig)
HINTS = typing.get_type_hints(TrainConfig)


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_dataclass_flags(p, TrainConfig)
    return p


def parse(*argv: str) -> dict[str, Any]:
    return values_from_args(parser().parse_args(list(argv)), TrainConfig)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_defaults_are_valid() -> None:
    cfg = TrainConfig()
    assert load_config(None, {}) == cfg
    assert cfg.loss == "logistic" and cfg.beta == 0.1 and cfg.max_prompt_length is None
    assert TrainConfig().report_to is not cfg.report_to  # no shared mutable default


def test_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write_yaml(tmp_path, "# nothing\n"), {}) == TrainConfig()


def test_yaml_values_are_used(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "beta: 1\nlearning_rate: 1.0e-4\nmax_prompt_length: 64\nreport_to: [none]\nresume: true\n",
    )
    cfg = load_config(path, {})
    assert cfg.beta == 1 and cfg.learning_rate == 1e-4  # an int is fine for a float field
    assert cfg.max_prompt_length == 64 and cfg.report_to == ["none"] and cfg.resume is True


def test_unknown_yaml_key_suggests_the_nearest(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "beta: 0.2\nlearning_rat: 0.001\n")
    with pytest.raises(ValueError, match="did you mean 'learning_rate'") as err:
        load_config(path, {})
    assert "unknown key 'learning_rat'" in str(err.value)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="unknown key 'zzzzzz'") as err:
        load_config(write_yaml(tmp_path, "zzzzzz: 1\n"), {})
    assert "did you mean" not in str(err.value)


@pytest.mark.parametrize(
    ("yaml_text", "key", "fragment"),
    [
        ("batch_size: '8'\n", "batch_size", "must be int, got str '8'"),
        ("batch_size: true\n", "batch_size", "must be int, got bool True"),
        ("max_steps: 1.5\n", "max_steps", "must be int, got float"),
        ("beta: yes\n", "beta", "must be float, got bool"),
        ("beta: '0.1'\n", "beta", "must be float, got str"),
        ("max_prompt_length: none\n", "max_prompt_length", "must be int or NoneType, got str"),
        ("resume: 1\n", "resume", "must be bool, got int"),
        ("model: 3\n", "model", "must be str, got int"),
        ("report_to: 3\n", "report_to", "must be list, got int"),  # a string is HF's one tracker
    ],
)
def test_wrong_types_name_the_key(tmp_path: Path, yaml_text: str, key: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=f"config: {key} {fragment}"):
        load_config(write_yaml(tmp_path, yaml_text), {})


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("dtype", "float64"),
        ("finetune", "qlora"),
        ("logp_reduction", "max"),
        ("prompt_truncation", "middle"),
        ("lr_scheduler", "step"),
        ("mixed_precision", "bf16-mixed"),
    ],
)
def test_literal_choices_enforced(tmp_path: Path, key: str, bad: str) -> None:
    choices = list(typing.get_args(HINTS[key]))
    with pytest.raises(ValueError, match=f"config: {key} must be one of") as err:
        load_config(write_yaml(tmp_path, f"{key}: {bad}\n"), {})
    assert repr(bad) in str(err.value) and all(repr(c) in str(err.value) for c in choices)
    assert getattr(load_config(None, {key: choices[-1]}), key) == choices[-1]  # choices accepted
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        parse(flag(key), bad)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("beta", 0.0),
        ("beta", -0.1),
        ("batch_size", 0),
        ("max_steps", 0),
        ("learning_rate", 0.0),
        ("gradient_accumulation_steps", -1),
        ("logging_steps", 0),
        ("eval_fraction", -0.1),  # 0 is allowed: no held-out set
        ("num_epochs", 0.0),
        ("eval_fraction", 1.0),
        ("warmup_ratio", 1.0),
        ("warmup_ratio", -0.1),
    ],
)
def test_out_of_range_values(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"config: {key} = {value!r} is out of range"):
        load_config(None, {key: value})


def test_boundaries_in_range() -> None:
    cfg = load_config(None, {"beta": 1e-9, "batch_size": 1, "warmup_ratio": 0.0})
    assert (cfg.beta, cfg.batch_size, cfg.warmup_ratio) == (1e-9, 1, 0.0)


def test_report_to_entries_checked() -> None:
    with pytest.raises(ValueError, match="report_to has unknown entries"):
        load_config(None, {"report_to": ["tensorboard", "mlflow"]})


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", {})
    with pytest.raises(ValueError, match="expected a mapping"):
        load_config(write_yaml(tmp_path, "- beta\n- 0.1\n"), {})
    with pytest.raises(ValueError, match="invalid YAML"):
        load_config(write_yaml(tmp_path, "beta: [0.1\n"), {})


def test_cli_flags_override_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "beta: 0.5\nbatch_size: 4\nmax_prompt_length: 64\nloss: savage\n")
    overrides = parse("--beta", "0.25", "--max-prompt-length", "none", "--lr-scheduler", "cosine")
    assert overrides == {"beta": 0.25, "max_prompt_length": None, "lr_scheduler": "cosine"}
    cfg = load_config(path, overrides)
    assert cfg.beta == 0.25  # flag beats YAML
    assert cfg.max_prompt_length is None  # 'none' overrides the YAML's 64
    assert cfg.batch_size == 4 and cfg.loss == "savage"  # YAML beats defaults
    assert cfg.lr_scheduler == "cosine"
    assert cfg.learning_rate == TrainConfig().learning_rate  # untouched: default
    assert load_config(path, {}).max_prompt_length == 64


def test_flags_not_given_are_absent() -> None:
    assert parse() == {}
    assert parse("--seed", "3") == {"seed": 3}


def test_none_and_bool_flags() -> None:
    assert parse("--max-prompt-length", "none") == {"max_prompt_length": None}
    assert parse("--max-prompt-length", "NULL") == {"max_prompt_length": None}
    assert parse("--max-prompt-length", "12") == {"max_prompt_length": 12}
    assert parse("--eval-split", "none") == {"eval_split": None}
    assert parse("--resume") == {"resume": True}  # given without a value
    assert parse("--resume", "--beta", "0.3") == {"resume": True, "beta": 0.3}
    assert parse("--progress", "false") == {"progress": False}
    assert parse("--progress", "no", "--resume", "yes") == {"progress": False, "resume": True}
    with pytest.raises(argparse.ArgumentError, match="expected true/false"):
        parse("--resume", "maybe")
    with pytest.raises(argparse.ArgumentError, match="invalid int value"):
        parse("--batch-size", "eight")
    assert parse("--report-to", "wandb", "tensorboard") == {"report_to": ["wandb", "tensorboard"]}


def _sample(name: str, default: Any) -> tuple[list[str], Any]:
    """CLI words for field ``name`` and the value they must give: a valid non-default value."""
    tp = HINTS[name]
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Literal:
        value = next(c for c in args if c != default)
        return [str(value)], value
    if tp is bool:
        return [str(not default).lower()], not default
    if typing.get_origin(tp) is list:
        return ["wandb", "none"], ["wandb", "none"]
    if type(None) in args:  # optional: 'none' unless that is the default
        if default is not None:
            return ["none"], None
        tp = next(a for a in args if a is not type(None))
    if tp is int:
        value = (default or 6) + 1
        return [str(value)], value
    if tp is float:
        value = default / 2 if default else 0.5
        return [repr(value)], value
    assert tp is str, f"{name}: no sample for {tp}"
    value = {"eval_schedule": "200:2000,2000"}.get(name, "some-value")  # validated strings
    return [value], value


@pytest.mark.parametrize("field", FIELDS, ids=[f.name for f in FIELDS])
def test_every_field_has_a_working_flag(field: dataclasses.Field[Any]) -> None:
    declared = field.default is not dataclasses.MISSING  # learning_rate: None, resolved later
    default = field.default if declared else TrainConfig().__dict__[field.name]
    choices = typing.get_args(HINTS[field.name])
    if typing.get_origin(HINTS[field.name]) is Literal and choices == (default,):
        # One choice so far: the flag takes it, and the config names it when refusing
        # anything else.
        assert parse(flag(field.name), str(default)) == {field.name: default}
        with pytest.raises(ValueError, match=rf"{field.name} must be one of \['{default}'\]"):
            load_config(None, {field.name: "other"})
        return
    words, value = _sample(field.name, default)
    assert value != default
    assert parse(flag(field.name), *words) == {field.name: value}
    needs = COMPANIONS.get(field.name, {})  # a setting refused without another one
    assert getattr(load_config(None, {field.name: value, **needs}), field.name) == value


#: Fields whose non-default value is refused alone (each test: the refusal's own).
COMPANIONS: dict[str, dict[str, Any]] = {
    "online_mixture": {"online": True},
    "online_labels": {"online": True},
}


def test_flags_and_fields_match_one_to_one() -> None:
    options = {
        opt
        for action in parser()._actions
        for opt in action.option_strings
        if opt not in ("-h", "--help")
    }
    assert options == {flag(f.name) for f in FIELDS}


def test_train_command_with_bad_config_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gpo.train.trainer
    from gpo.cli import main

    def no_training(cfg: TrainConfig) -> dict[str, Any]:
        raise AssertionError("training must not start with a bad config")

    monkeypatch.setattr(gpo.train.trainer, "train", no_training)
    bad = write_yaml(tmp_path, "beta: 0.1\nlearning_rat: 0.001\n")
    assert main(["train", "--config", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("gpo: error: config file")
    assert "did you mean 'learning_rate'" in lines[0]

    good = write_yaml(tmp_path, "beta: 0.1\n")
    assert main(["train", "--config", str(good), "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "gpo: error: config: batch_size = 0 is out of range: must be >= 1\n"


def test_every_config_field_has_its_comment_as_flag_help():
    import argparse
    import dataclasses

    comments = field_comments(TrainConfig)
    missing = [f.name for f in dataclasses.fields(TrainConfig) if not comments.get(f.name)]
    assert not missing, f"TrainConfig fields without a trailing # comment: {missing}"
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, TrainConfig)
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["reuse_host_memory"].startswith(comments["reuse_host_memory"])
    assert helps["beta"].endswith("(default: 0.1)")


def test_default_learning_rate_depends_on_the_fine_tuning_mode() -> None:
    assert TrainConfig().learning_rate == 1e-3  # LoRA
    assert TrainConfig(finetune="full").learning_rate == 1e-5
    assert TrainConfig(finetune="full", learning_rate=3e-6).learning_rate == 3e-6


def test_resume_takes_the_saved_config_and_explicit_flags_override_it(tmp_path) -> None:
    from gpo.io import write_json

    saved = TrainConfig(out=str(tmp_path), loss="savage", beta=0.3, max_steps=40, seed=5)
    write_json(tmp_path / "config.json", saved)
    cfg = load_config(None, {"out": str(tmp_path), "resume": True})
    assert (cfg.loss, cfg.beta, cfg.max_steps, cfg.seed) == ("savage", 0.3, 40, 5)
    cfg = load_config(None, {"out": str(tmp_path), "resume": True, "max_steps": 60})
    assert (cfg.loss, cfg.max_steps) == ("savage", 60)
    fresh = load_config(None, {"out": str(tmp_path)})  # without --resume: the defaults
    assert fresh.loss == "logistic"


def test_resume_a_run_saved_before_newer_settings_existed(tmp_path) -> None:
    """A config.json without a later key resumes when that key is at the value the old run
    ran with: the default, or gain 0 for the LR brake of a KL-targeted run (which had none)."""
    import json

    from gpo.train.config import saved_config
    from gpo.train.resume import check_config as check_resume

    def saved_without(cfg: TrainConfig, *keys: str) -> None:
        old = {k: v for k, v in saved_config(cfg).items() if k not in keys}
        (tmp_path / "config.json").write_text(json.dumps(old))

    plain = TrainConfig(out=str(tmp_path))
    saved_without(plain, "kl_lr_gain", "max_padding")
    check_resume(tmp_path, plain)  # neither mattered to this run

    steered = TrainConfig(out=str(tmp_path), kl_target=3.0)
    saved_without(steered, "kl_lr_gain")
    with pytest.raises(ValueError, match=r"kl_lr_gain: 0.0 -> 1.0"):
        check_resume(tmp_path, steered)  # it ran without the brake
    check_resume(tmp_path, TrainConfig(out=str(tmp_path), kl_target=3.0, kl_lr_gain=0.0))
