"""The switches and names a TRL user reaches for first (issue 32, part B), each at the CLI on a
user's own GPT-2 (256 positions) and Llama (512), built in tests/user_models.py: TRL loss names,
a DPOConfig-style YAML, --gradient-checkpointing and --ref-model."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from cli_args import train_argv
from conftest import write_tiny_preferences

from gpo.cli import main


@pytest.fixture(scope="module")
def prefs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    write_tiny_preferences(path, n=16)
    return path


def _train(model: Path, data: Path, out: Path, *extra: str) -> int:
    """``max_length`` left at its default: min(1024, the model's position limit)."""
    return main(train_argv(model, data, out, *extra))


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


# --- TRL loss names ---------------------------------------------------------------------------


def test_trl_loss_names_run_as_gpo_losses(user_gpt2, prefs, tmp_path, capsys):
    """`--loss dpo` (and TRL's sigmoid) is logistic, recorded as such; `ipo` and a typo say what
    to write instead."""
    run = tmp_path / "dpo"
    assert _train(user_gpt2, prefs, run, "--max-steps", "1", "--loss", "dpo") == 0
    assert json.loads((run / "config.json").read_text())["loss"] == "logistic"
    capsys.readouterr()
    assert _train(user_gpt2, prefs, tmp_path / "ipo", "--loss", "ipo") == 2
    err = capsys.readouterr().err
    assert "iupo:reverse_kl --logp-reduction mean" in err and len(err.splitlines()) == 1
    assert _train(user_gpt2, prefs, tmp_path / "typo", "--loss", "savag") == 2
    err = capsys.readouterr().err
    assert "did you mean 'savage'" in err and "dpo, sigmoid (= logistic)" in err


def test_the_loss_aliases_come_from_the_one_registry(capsys):
    from gpo.losses import LOSSES
    from gpo.losses.family import LOSS_ALIASES, resolve_loss
    from gpo.losses.objectives import resolve_objective

    assert LOSS_ALIASES == {"dpo": "logistic", "sigmoid": "logistic", "slic": "hinge"}
    for alias, name in LOSS_ALIASES.items():
        assert alias in LOSSES[name].aliases
        assert resolve_loss(alias) is LOSSES[name]  # gpo experiment's registry
        assert resolve_objective(alias).name == name  # gpo train's
    assert main(["losses"]) == 0
    assert "--loss (the same loss at the same beta): dpo, sigmoid (= logistic); slic (= hinge)" in (
        capsys.readouterr().out
    )


# --- a TRL DPOConfig YAML -----------------------------------------------------------------------

TRL_YAML = """\
model_name_or_path: {model}
dataset_name: {data}
output_dir: {out}
per_device_train_batch_size: 4
gradient_accumulation_steps: 1
learning_rate: 5.0e-4
max_steps: 2
num_train_epochs: 3
lr_scheduler_type: cosine
warmup_steps: 0.5
beta: 0.2
loss_type: [sigmoid]
max_length: 256
bf16: false
logging_steps: 1
save_strategy: "no"
eval_strategy: "no"
report_to: none
use_peft: true
lora_r: 4
lora_target_modules: [c_attn]
push_to_hub: false
precompute_ref_log_probs: true
dataloader_num_workers: 2
f_divergence_type: reverse_kl
"""


def test_a_trl_dpo_config_yaml_trains(user_gpt2, prefs, tmp_path, capsys):
    """The keys that map are used; the others are named, once, in one line on stderr."""
    run = tmp_path / "run"
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(TRL_YAML.format(model=user_gpt2, data=prefs, out=run))
    argv = ["train", "--config", str(cfg), "--progress", "false", "--kl-prompts", "0"]
    assert main([*argv, "--save-final", "false"]) == 0
    err = capsys.readouterr().err
    ignored = [line for line in err.splitlines() if "ignored" in line]
    assert ignored == [
        f"gpo: config file {cfg}: ignored push_to_hub, precompute_ref_log_probs, "
        "dataloader_num_workers, f_divergence_type"
    ]
    saved = json.loads((run / "config.json").read_text())
    expected = {
        "model": str(user_gpt2),
        "batch_size": 4,
        "learning_rate": 5e-4,
        "max_steps": 2,
        "num_epochs": None,  # HF: max_steps > 0 wins over num_train_epochs
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.5,
        "beta": 0.2,
        "loss": "logistic",
        "finetune": "lora",
        "lora_r": 4,
        "lora_target_modules": "c_attn",
        "save_steps": 0,
        "eval_steps": 0,
        "report_to": ["none"],
    }
    assert {k: saved[k] for k in expected} == expected
    assert [r["step"] for r in _records(run)] == [1, 2]


def test_every_unknown_key_is_named_with_a_suggestion(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("per_device_train_batch_sise: 4\nlearnin_rate: 1.0e-4\nzzzz: 1\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"gpo: error: config file {cfg}: unknown keys (3) 'per_device_train_batch_sise' "
        "(did you mean 'batch_size'?), 'learnin_rate' (did you mean 'learning_rate'?), 'zzzz'"
    )


def test_a_trl_key_that_would_change_the_objective_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("f_divergence_type: js_divergence\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "f_divergence_type: 'js_divergence' has no equivalent" in err and "fdpo:js" in err


# --- --gradient-checkpointing -------------------------------------------------------------------


@pytest.mark.parametrize("finetune", ["lora", "full"])
@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_gradient_checkpointing_gives_the_same_gradients(
    which, finetune, user_gpt2, user_llama, active_lora
):
    """Every trainable weight's gradient, with and without, on one batch (prefix sharing off on
    both sides: under checkpointing the plain path runs, see gpo.models.logps)."""
    from gpo.data.collate import collate_for_training
    from gpo.data.tokenize import TokenizedPair
    from gpo.models.loading import (
        disable_dropout,
        enable_gradient_checkpointing,
        load_model_and_tokenizer,
    )
    from gpo.models.logps import PolicyLogps, _checkpointing

    path = user_gpt2 if which == "gpt2" else user_llama
    grads = []
    for on in (False, True):
        model, tok = load_model_and_tokenizer(str(path))
        disable_dropout(model)  # GPT-2 has dropout 0.1: gpo turns it off, as TRL does
        torch.manual_seed(0)
        model = active_lora(model) if finetune == "lora" else model
        if on:
            enable_gradient_checkpointing(model)
        model.train()
        assert _checkpointing(model) is on
        ids = [tok.encode(t) for t in ("The film was a", " quiet triumph", " dull plot, bad")]
        batch = collate_for_training([TokenizedPair(i, *ids) for i in range(3)], 0, False)
        PolicyLogps(model)(batch)[0].sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    off, on_ = grads
    assert off.keys() == on_.keys() and off
    for name in off:
        torch.testing.assert_close(on_[name], off[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("which", "finetune"), [("gpt2", "full"), ("llama", "lora")], ids=["gpt2-full", "llama-lora"]
)
def test_gradient_checkpointing_at_the_cli(
    which, finetune, user_gpt2, user_llama, prefs, tmp_path, capsys
):
    """Two steps with and without: the same losses and gradient norms (prefix sharing, on
    without checkpointing only, agrees with the plain path to float rounding)."""
    model = user_gpt2 if which == "gpt2" else user_llama
    runs = []
    for flag in ("false", "true"):
        run = tmp_path / flag
        extra = ["--max-steps", "2", "--finetune", finetune, "--gradient-checkpointing", flag]
        assert _train(model, prefs, run, *extra, "--ref-cache", "none") == 0
        said = "gradient checkpointing)" in capsys.readouterr().out  # the start-up summary
        assert said == (flag == "true")
        assert json.loads((run / "config.json").read_text())["gradient_checkpointing"] == (
            flag == "true"
        )
        runs.append(_records(run))
    off, on = runs
    for a, b in zip(off, on, strict=True):
        for key in ("loss", "grad_norm", "rewards/margins"):
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), (key, a, b)


# --- --ref-model --------------------------------------------------------------------------------


def _other_gpt2(path: Path, seed: int) -> Path:
    """The user's GPT-2 architecture and tokenizer with other weights."""
    from user_models import gpt2_256

    return gpt2_256(path, seed=seed)


def _lora_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter folder on ``base`` whose B matrices are not zero (it changes the model)."""
    from gpo.models.loading import add_lora, load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(base))
    model = add_lora(model, 4, 8, 0.0, "all-linear")
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _first_loss(run: Path) -> float:
    return _records(run)[0]["loss"]


def test_ref_model_is_the_reference_and_keys_the_cache(user_gpt2, prefs, tmp_path, capsys):
    """At step 1 the policy is its starting weights: with pi_ref = those weights rho = 0 and the
    logistic loss is log 2; another model or a LoRA adapter as pi_ref moves it. Each reference
    has its own log-prob cache folder; --ref-model naming the starting weights shares theirs."""
    other = _other_gpt2(tmp_path / "other", seed=7)
    adapter = _lora_adapter(user_gpt2, tmp_path / "adapter")
    cache = tmp_path / "cache"
    common = ["--max-steps", "1", "--finetune", "full", "--ref-cache", str(cache)]
    folders: list[set[str]] = []
    losses = {}
    for name, ref in (("none", None), ("self", user_gpt2), ("other", other), ("lora", adapter)):
        extra = [*common, *(["--ref-model", str(ref)] if ref else [])]
        run = tmp_path / f"run-{name}"
        assert _train(user_gpt2, prefs, run, *extra) == 0, capsys.readouterr().err
        losses[name] = _first_loss(run)
        folders.append({p.name for p in cache.iterdir()})
    assert losses["none"] == pytest.approx(math.log(2), abs=1e-6)
    assert losses["self"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(losses["other"] - math.log(2)) > 1e-3
    assert abs(losses["lora"] - math.log(2)) > 1e-3
    assert [len(f) for f in folders] == [1, 1, 2, 3]  # self shares none's folder


def test_ref_model_with_a_lora_policy(user_llama, prefs, tmp_path, capsys):
    """A LoRA policy with an explicit reference: pi_ref is that model, not the adapters-off
    policy (step-1 loss away from log 2)."""
    from user_models import llama_512

    other = llama_512(tmp_path / "other", seed=3)
    run = tmp_path / "run"
    extra = ["--max-steps", "1", "--ref-model", str(other), "--ref-cache", "none"]
    assert _train(user_llama, prefs, run, *extra) == 0
    assert abs(_first_loss(run) - math.log(2)) > 1e-3
    assert f"(LoRA r 16, pi_ref {other})" in capsys.readouterr().out  # the start-up summary


def test_a_reference_with_another_tokenizer_is_refused_in_one_line(
    user_gpt2, prefs, tmp_path, capsys
):
    from transformers import GPT2Config, GPT2LMHeadModel
    from user_models import _bpe_tokenizer

    other = tmp_path / "other-vocab"
    tok = _bpe_tokenizer(vocab_size=280)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=1,
                               n_head=2)).save_pretrained(other)  # fmt: skip
    tok.save_pretrained(other)
    capsys.readouterr()  # save_pretrained's progress bar
    run = tmp_path / "run"
    assert _train(user_gpt2, prefs, run, "--ref-model", str(other)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"gpo: error: --ref-model {other} has another tokenizer than --model")
    assert not run.exists()  # a failed start leaves nothing behind


def test_a_reference_with_fewer_positions_than_max_length_is_refused(
    user_gpt2, user_llama, prefs, tmp_path, capsys
):
    """The user's Llama (512 positions) with their GPT-2 (256, the same tokenizer) as pi_ref."""
    run = tmp_path / "run"
    assert _train(user_llama, prefs, run, "--max-length", "300", "--ref-model", str(user_gpt2)) == 2
    err = capsys.readouterr().err
    assert f"max_length = 300 is more than model {user_gpt2}'s n_positions (256)" in err, err


# --- gpo report on a small sweep ----------------------------------------------------------------


def _report_run(sweep: Path, loss: str, beta: float, evals: list[tuple[float, float, float]],
                text: str | None = None) -> None:  # fmt: skip
    """A finished run whose evaluations had these (KL, win rate, win-rate SE), in order; with
    ``text``, final samples of that text (for the side-by-side)."""
    d = sweep / "runs" / f"loss={loss}_beta={beta}"
    d.mkdir(parents=True)
    config = {"loss": loss, "beta": beta, "seed": 0, "kl_target": None, "judge": "gold"}
    (d / "config.json").write_text(json.dumps(config))
    records = [{"step": 1, "loss": 0.69}]
    for k, (kl, wr, se) in enumerate(evals):
        records.append({"step": 10 * (k + 1), "eval/loss": 0.6, "eval/mu_sq_loss": 0.5,
                        "eval/kl": kl, "eval/kl_se": 0.1, "eval/win_rate": wr,
                        "eval/win_rate_se": se})  # fmt: skip
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "summary.json").write_text(json.dumps({"steps": 30}))
    if text is not None:
        (d / "samples").mkdir()
        row = {"prompt": "Write one sentence about a cat.", "policy": text, "opponent": "cat"}
        (d / "samples" / "step-000030.jsonl").write_text(json.dumps(row) + "\n")


GOOD = "The cat sat quietly on the warm mat by the door."
BAD = "cat cat cat"


def test_report_says_which_points_the_log_figures_leave_out(tmp_path, capsys):
    """beta = 1 stays at pi_ref: its Monte Carlo KLs are <= 0 and its curves vanish from the
    log-log Fig. 5; report.md says so, per figure, with the curves that lost every point."""
    _report_run(tmp_path, "logistic", 0.1, [(0.5, 0.5, 0.04), (2.0, 0.6, 0.04)])
    _report_run(tmp_path, "hinge", 0.1, [(0.4, 0.5, 0.04), (-0.1, 0.6, 0.04)])
    _report_run(tmp_path, "logistic", 1.0, [(-0.02, 0.5, 0.04), (0.0, 0.5, 0.04)])
    _report_run(tmp_path, "hinge", 1.0, [(-0.01, 0.5, 0.04), (-0.03, 0.5, 0.04)])
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Points the log-scale figures leave out" in text
    gone = "hinge beta=1, logistic beta=1"
    assert f"| fig5_kl_vs_mu_sq.png | 8 | 5 | KL <= 0: 5 | {gone} |" in text
    assert f"| fig6_win_rate_vs_kl.png | 8 | 5 | KL <= 0: 5 | {gone} |" in text
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    fig5 = summary["omitted_points"][0]
    assert (fig5["figure"], fig5["points"], fig5["left_out"]) == ("fig5_kl_vs_mu_sq.png", 8, 5)


def test_no_left_out_section_when_every_point_is_drawn(tmp_path):
    _report_run(tmp_path, "logistic", 0.1, [(0.5, 0.5, 0.04), (2.0, 0.6, 0.04)])
    assert main(["report", str(tmp_path)]) == 0
    assert "leave out" not in (tmp_path / "report" / "report.md").read_text()
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert [(f["points"], f["left_out"]) for f in summary["omitted_points"]] == [(2, 0)] * 4


@pytest.mark.parametrize(
    ("wins_at_1", "note"),
    [
        (0.60, "but a tie: within one SE of the difference of it are 1: 0.6 +- 0.0283"),
        (0.40, "more than one SE of the difference above every other beta"),
    ],
)
def test_the_side_by_side_beta_says_how_sure_it_is(tmp_path, wins_at_1, note):
    """Mean final win rate 0.62 +- 0.028 at beta 0.1 against 0.60 at beta 1 is a tie, stated;
    against 0.40 it is not."""
    _report_run(tmp_path, "logistic", 0.1, [(1.0, 0.62, 0.04)], GOOD)
    _report_run(tmp_path, "hinge", 0.1, [(1.0, 0.62, 0.04)], BAD)
    _report_run(tmp_path, "logistic", 1.0, [(1.0, wins_at_1, 0.04)], GOOD)
    _report_run(tmp_path, "hinge", 1.0, [(1.0, wins_at_1, 0.04)], BAD)
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "beta = 0.1 has the best mean final win rate over losses (0.62 +- 0.0283)" in text
    assert note in text
    choice = json.loads((tmp_path / "report" / "summary.json").read_text())["report"]
    assert choice["side_by_side_beta_choice"]["tied"] == ([1.0] if wins_at_1 > 0.5 else [])
    assert main(["report", str(tmp_path), "--beta", "1"]) == 0
    assert "beta = 1 was chosen with --beta." in (tmp_path / "report" / "report.md").read_text()


def test_the_sweeps_last_line_counts_every_invocation(user_gpt2, prefs, tmp_path, capsys):
    """One run finished by an earlier invocation, one now: '2/2 finished (1 before, 1 in it)'
    and the time is said to be this invocation's."""
    import yaml

    from gpo.experiments.sweep import load_sweep_config, plan

    base = {"model": str(user_gpt2), "data": str(prefs), "max_steps": 1,
            "batch_size": 4, "eval_steps": 0, "kl_prompts": 0, "save_final": False,
            "report_to": ["none"], "progress": False, "ref_cache": "none"}  # fmt: skip
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"base": base, "grid": {"beta": [0.1, 1.0]}}))
    out = tmp_path / "out"
    first = plan(load_sweep_config(config, None), out)[0]
    first.dir.mkdir(parents=True)
    (first.dir / "config.json").write_text("{}")
    (first.dir / "summary.json").write_text(json.dumps({"steps": 1}))  # an earlier invocation's
    assert main(["sweep", "--config", str(config), "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(
        "sweep: 2/2 runs finished (1 before this invocation, 1 in it); this invocation took "
    ), last


# --- W&B ------------------------------------------------------------------------------------------


def test_wandb_run_id_from_the_environment_names_the_run_to_go_on_in(
    user_gpt2, prefs, tmp_path, monkeypatch
):
    """$WANDB_RUN_ID (as with TRL) picks the W&B run a new gpo run logs into; its resume keeps
    that id even when the variable has changed since."""
    from test_tracking import FakeWandb

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_RUN_ID", "trl-run-7")
    run = tmp_path / "run"
    extra = ["--report-to", "wandb", "--run-name", "mine", "--save-steps", "1"]
    assert _train(user_gpt2, prefs, run, "--max-steps", "1", *extra) == 0
    monkeypatch.setenv("WANDB_RUN_ID", "another")
    assert _train(user_gpt2, prefs, run, "--max-steps", "2", "--resume", *extra) == 0
    assert [(i["id"], i["name"], i["resume"]) for i in fake.inits] == [
        ("trl-run-7", "mine", "allow"),
        ("trl-run-7", "mine", "allow"),
    ]
