"""The first hour of a new user (issue 14): resume as the README writes it, Ctrl-C, defaults,
TRL habits, what is shown and logged, and run folders that load anywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_args import logged_steps, train_argv

from gpo.cli import main


def test_resume_as_the_readme_writes_it(tiny_model_dir, tiny_data_file, tmp_path, capsys):
    """`gpo train --out RUN --resume` takes the run's saved config; only explicit flags differ,
    a finished run is not retrained, and a change of the optimisation is refused by name."""
    run = tmp_path / "run"
    argv = train_argv(tiny_model_dir, tiny_data_file, run, "--max-steps", "4", "--save-steps", "2")
    assert main([*argv, "--loss", "savage", "--beta", "0.3"]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert "already finished 4 steps: nothing to resume" in capsys.readouterr().out
    assert logged_steps(run) == [1, 2, 3, 4]
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "6"]) == 0
    out = capsys.readouterr().out
    assert "resuming at step 2" in out
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "config.json").read_text())["loss"] == "savage"
    assert main(["train", "--out", str(run), "--resume", "--beta", "0.5"]) == 2
    assert "refusing to resume" in capsys.readouterr().err


def test_resume_without_a_run_yet_starts_from_scratch(tiny_model_dir, tiny_data_file, tmp_path):
    """A requeued job that died while starting can always pass --resume."""
    run = tmp_path / "requeued"
    run.mkdir()
    argv = train_argv(tiny_model_dir, tiny_data_file, run, "--max-steps", "2", "--resume")
    proc = subprocess.run(
        [sys.executable, "-m", "gpo.cli", *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert f"nothing to resume in {run}: starting the run from scratch" in proc.stdout
    assert logged_steps(run) == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_checkpoints_and_says_how_to_resume(
    tiny_model_dir, tiny_data_file, tmp_path, sig, code
):
    run = tmp_path / "run"
    argv = train_argv(
        tiny_model_dir, tiny_data_file, run, "--max-steps", "500", "--save-steps", "0"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpo.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    name = signal.Signals(sig).name
    assert lines[0].startswith(f"gpo: {name}: interrupted at step ")
    assert lines[0].endswith(f"resume with: gpo train --out {run} --resume")
    step = int(lines[0].split("interrupted at step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"step-{step:06d}" / "state.json").is_file()
    assert not (run / "summary.json").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "gpo.cli", "train", "--out", str(run), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0 and f"resuming at step {step}" in resumed.stdout
    assert logged_steps(run) == list(range(1, 501))


def test_trl_loss_names(tiny_model_dir, tiny_data_file, tmp_path, capsys):
    from gpo.losses.objectives import OBJECTIVES, resolve_objective

    assert resolve_objective("sigmoid") is OBJECTIVES["logistic"]
    assert main(train_argv(tiny_model_dir, tiny_data_file, tmp_path / "ipo", "--loss", "ipo")) == 2
    err = capsys.readouterr().err
    assert "iupo:reverse_kl --logp-reduction mean" in err and "\n" not in err.strip()
    assert not (tmp_path / "ipo").exists()


def test_epochs_no_eval_and_what_is_logged(tiny_model_dir, tiny_data_file, tmp_path, capsys):
    """--num-epochs sets the steps; --eval-fraction 0 turns evaluation off; train records carry
    grad_norm and token counts; the start-up summary is a few lines."""
    run = tmp_path / "epochs"
    argv = train_argv(
        tiny_model_dir, tiny_data_file, run, "--num-epochs", "1", "--eval-fraction", "0"
    )
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpo train: logistic (beta 0.1)")
    assert len(out.split("\ndata:")[0].splitlines()) <= 6
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 12  # 48 rows, none held out, batch 4: one epoch is 12 steps
    assert not any(k.startswith("eval/") for r in records for k in r)
    assert all(r["grad_norm"] > 0 and r["tokens"] > 0 for r in records)
    assert json.loads((run / "config.json").read_text())["max_steps"] == 12


def test_tensorboard_tags_are_grouped(tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gpo.train.trainer import train

    cfg = tiny_config("tb", max_steps=2, eval_steps=2, report_to=["tensorboard"])
    train(cfg)
    acc = EventAccumulator(str(Path(cfg.out) / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "train/grad_norm" in tags and "eval/loss" in tags
    assert "loss" not in tags


def test_a_data_error_leaves_no_run_folder(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b"}\n')
    run = tmp_path / "run"
    assert main(train_argv(tiny_model_dir, bad, run)) == 2
    assert "rejected" in capsys.readouterr().err
    assert not run.exists()


def test_final_adapter_and_checkpoints_load_from_another_directory(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    """A relative --model is stored as an absolute path in adapter_config.json, and each
    checkpoint carries the tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tiny_model_dir.parent)
    rel = f"./{tiny_model_dir.name}"
    run = tmp_path / "lora"
    argv = train_argv(Path(rel), tiny_data_file, run, "--max-steps", "2", "--save-steps", "1")
    assert main([*argv, "--save-final", "true"]) == 0
    adapter = json.loads((run / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    monkeypatch.chdir(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"])
    PeftModel.from_pretrained(base, run / "final")
    AutoTokenizer.from_pretrained(run / "checkpoints" / "step-000001")


def test_report_leaves_out_win_rate_figures_without_judge_evals(tmp_path, capsys):
    from gpo.experiments.report import report

    for loss, beta in (("logistic", 0.1), ("hinge", 0.1)):
        d = tmp_path / "runs" / f"loss={loss}_beta={beta}"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"loss": loss, "beta": beta, "seed": 0}))
        rows = [
            {"step": s, "loss": 1.0 / s, "eval/loss": 1.0, "eval/kl": 0.1 * s,
             "eval/kl_se": 0.01, "eval/mu_sq_loss": 0.05 * s, "eval/rewards/accuracies": 0.5,
             "eval/rewards/margins": 0.0}
            for s in (1, 2, 3)
        ]  # fmt: skip
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = report(tmp_path)
    assert "no run evaluated a win rate" in capsys.readouterr().out
    figures = summary["figures"]
    assert "fig5_kl_vs_mu_sq.png" in figures and "fig7_peak_win_rate_median_kl.png" in figures
    assert not {"fig6_win_rate_vs_kl.png", "fig11_final_win_rate_vs_beta.png"} & set(figures)
