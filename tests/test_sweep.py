"""Sweeps, eval schedules, presets and reports (a 2 losses x 2 betas sweep on a tiny model)."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpo.cli import main
from gpo.cli.flags import add_dataclass_flags, values_from_args
from gpo.experiments.presets import PRESETS, preset_dict
from gpo.experiments.sweep import SweepConfig, load_sweep_config, plan, train_args
from gpo.train.config import TrainConfig
from gpo.train.schedule import eval_steps_of, parse_schedule

FIGURES = [
    "fig5_kl_vs_mu_sq.png",
    "fig10_kl_vs_mu_sq_pooled.png",
    "fig6_win_rate_vs_kl.png",
    "fig9_win_rate_vs_kl_by_beta.png",
    "fig7_peak_win_rate_median_kl.png",
    "fig11_final_win_rate_vs_beta.png",
    "fig12_side_by_side.png",
    "spearman_vs_beta.png",
    "curves.png",
    "gold_hacking_vs_kl.png",  # judged by the gold reward, with per-eval samples
]


def _base(model_dir: Path, data_file: Path) -> dict:
    return {
        "model": str(model_dir),
        "data": str(data_file),
        "eval_fraction": 0.1,
        "finetune": "full",
        "batch_size": 4,
        "learning_rate": 3e-3,
        "lr_scheduler": "constant",
        "warmup_ratio": 0.0,
        "max_steps": 6,
        "logging_steps": 2,
        "eval_schedule": "2:4,3",  # steps 2, 4 (first segment), 6 (last step)
        "save_steps": 2,  # a multiple of logging_steps: a resumed run logs the same windows
        "kl_prompts": 3,
        "kl_samples": 2,
        "max_new_tokens": 6,
        "judge_prompts": 4,
        "gold_eval_prompts": 0,
        "save_final": False,
        "report_to": ["none"],
        "progress": False,
    }


def _write_sweep(path: Path, model_dir: Path, data_file: Path) -> Path:
    cfg = {
        "base": _base(model_dir, data_file),
        "grid": {"loss": ["logistic", "hinge"], "beta": [0.1, 1.0]},
        "jobs": 2,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# --- fast unit tests ----------------------------------------------------------------------------


def test_eval_schedule_is_dense_early_then_sparse() -> None:
    assert eval_steps_of("200:2000,2000", 20000)[:10] == [200 * k for k in range(1, 11)]
    assert eval_steps_of("200:2000,2000", 20000)[10:] == [2000 * k for k in range(2, 11)]
    assert eval_steps_of("2:4,3", 7) == [2, 4, 6, 7]  # the last step is always evaluated
    assert eval_steps_of("5", 12) == [5, 10, 12]
    for bad in ("0", "a:3", "5,3:10", "2:10,3:5", ""):
        with pytest.raises(ValueError, match="eval schedule"):
            parse_schedule(bad)
    with pytest.raises(ValueError, match="eval schedule"):
        TrainConfig(eval_schedule="200:x")


def test_plan_names_runs_and_validates_every_point(tmp_path: Path) -> None:
    cfg = SweepConfig(base={"max_steps": 5}, grid={"loss": ["iupo:js", "savage"], "beta": [0.1]})
    runs = plan(cfg, tmp_path)
    assert [r.name for r in runs] == ["loss=iupo_js_beta=0.1", "loss=savage_beta=0.1"]
    assert runs[0].config.loss == "iupo:js" and runs[0].config.max_steps == 5
    assert runs[1].dir == tmp_path / "runs" / "loss=savage_beta=0.1"
    with pytest.raises(ValueError, match="did you mean 'beta'"):
        SweepConfig(grid={"betas": [1.0]})
    with pytest.raises(ValueError, match=r"sweep run loss=logistic_beta=-1: config: beta"):
        plan(SweepConfig(grid={"loss": ["logistic"], "beta": [-1.0]}), tmp_path)
    with pytest.raises(ValueError, match="unknown preset 'nope': choose one of cpu-small"):
        load_sweep_config(None, "nope")


def test_explicit_runs_run_once_per_grid_point(tmp_path: Path) -> None:
    """``runs``: settings that are no grid (issue 28's battery), each named, on top of base."""
    runs = [{"name": "fast", "learning_rate": 3e-3}, {"name": "sq", "loss": "square"}]
    cfg = SweepConfig(base={"data": "gold", "beta": 0.1}, grid={"seed": [0, 1]}, runs=runs)
    planned = plan(cfg, tmp_path)
    assert [r.name for r in planned] == ["fast_seed=0", "sq_seed=0", "fast_seed=1", "sq_seed=1"]
    assert planned[0].config.learning_rate == 3e-3 and planned[0].config.loss == "logistic"
    assert planned[1].config.loss == "square" and planned[3].config.seed == 1
    assert planned[1].dir == tmp_path / "runs" / "sq_seed=0"
    only = plan(SweepConfig(base={"data": "gold"}, runs=runs), tmp_path)
    assert [r.name for r in only] == ["fast", "sq"]
    for bad, fragment in (
        ([{"beta": 1.0}], "must be a mapping with a 'name'"),
        ([{"name": "x", "seed": 3}], "key 'seed' is unknown, a grid key"),
        ([{"name": "x", "bta": 3}], "did you mean 'beta'"),
        ([{"name": "x", "out": "elsewhere"}], "set by the sweep"),
    ):
        with pytest.raises(ValueError, match=fragment):
            SweepConfig(base={"data": "gold"}, grid={"seed": [0]}, runs=bad)


def test_train_args_round_trip_through_the_cli_parser() -> None:
    tc = TrainConfig(
        loss="iupo:js",
        beta=0.01,
        eval_schedule="200:2000,2000",
        report_to=["none"],
        progress=False,
        eval_split=None,
        out="/x/y",
        learning_rate=3e-5,
    )
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, TrainConfig)
    parsed = values_from_args(parser.parse_args(train_args(tc)), TrainConfig)
    assert TrainConfig(**parsed) == tc


def test_presets_resolve_to_valid_runs(tmp_path: Path) -> None:
    for name in PRESETS:
        runs = plan(load_sweep_config(None, name), tmp_path / name)
        assert runs, name
    small = plan(load_sweep_config(None, "cpu-small"), tmp_path)
    betas = sorted({r.config.beta for r in small})
    assert betas[0] <= 0.01 and betas[-1] >= 100
    assert len({r.config.loss for r in small}) == 6
    paper = preset_dict("paper")
    assert paper["base"]["max_steps"] == 20000 and paper["base"]["eval_schedule"] == "200:2000,2000"
    upo = {r.config.loss for r in plan(load_sweep_config(None, "upo"), tmp_path / "u")}
    assert upo == {"iupo:reverse_kl", "iupo:js"}
    # A YAML config overrides a preset key by key.
    over = tmp_path / "over.yaml"
    over.write_text("base: {max_steps: 7}\ngrid: {beta: [1.0]}\n")
    merged = load_sweep_config(over, "cpu-small")
    assert merged.base["max_steps"] == 7 and merged.base["finetune"] == "full"
    assert merged.grid["beta"] == [1.0] and len(merged.grid["loss"]) == 6


# --- end to end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model_dir, tiny_data_file):
    """A finished 2 x 2 sweep run through the CLI with 2 parallel jobs; (dir, config, output)."""
    root = tmp_path_factory.mktemp("sweep")
    config = _write_sweep(root / "sweep.yaml", tiny_model_dir, tiny_data_file)
    out = root / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "gpo.cli", "sweep", "--config", str(config), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, config, proc.stdout


@pytest.mark.slow
def test_sweep_runs_every_point_with_the_eval_schedule(sweep) -> None:
    out, _, stdout = sweep
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 4
    assert stdout.count(": started") == 4 and stdout.count(": done in") == 4
    assert json.loads((out / "sweep.json").read_text())["sweep"]["grid"]["beta"] == [0.1, 1.0]
    for run in runs:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in rows if "eval/win_rate" in r]
        assert [r["step"] for r in evals] == [2, 4, 6]
        for r in evals:
            assert 0 <= r["eval/win_rate"] <= 1 and math.isfinite(r["eval/kl"])
            assert math.isfinite(r["eval/mu_sq_loss"])
        assert len(list((run / "samples").glob("step-*.jsonl"))) == 3


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_resumes_an_interrupted_one(sweep, capsys) -> None:
    out, config, _ = sweep
    runs = sorted((out / "runs").iterdir())
    interrupted = runs[1]
    # Interrupted after its step-4 checkpoint: no summary; what came after step 4 is redone.
    (interrupted / "summary.json").unlink()
    before = {r: (r / "summary.json").stat().st_mtime_ns for r in runs if r != interrupted}
    assert main(["sweep", "--config", str(config), "--out", str(out), "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished before, skipped") == 3
    assert f"{interrupted.name}: resuming" in printed
    assert "resuming at step 4" in (interrupted / "train.log").read_text()
    assert (interrupted / "summary.json").is_file()
    assert before == {r: (r / "summary.json").stat().st_mtime_ns for r in before}


@pytest.mark.slow
def test_printed_command_reproduces_a_run(sweep, capsys, tmp_path) -> None:
    out, config, _ = sweep
    assert main(["sweep", "--config", str(config), "--out", str(out), "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("gpo train ") for line in lines)
    args = shlex.split(lines[0])[2:]
    original = Path(args[args.index("--out") + 1])
    args[args.index("--out") + 1] = str(tmp_path / "again")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # as the sweep's jobs
    subprocess.run(
        [sys.executable, "-m", "gpo.cli", "train", *args],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )

    def numbers(run: Path) -> list[dict]:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if "win_rate" not in k} for r in rows]

    a, b = numbers(original), numbers(tmp_path / "again")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-5), k


@pytest.mark.slow
def test_report_writes_every_file_with_finite_data(sweep, tmp_path) -> None:
    out, _, _ = sweep
    assert main(["report", str(out), "--out", str(tmp_path), "--beta", "0.1"]) == 0
    for name in FIGURES:
        assert (tmp_path / name).stat().st_size > 5000, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sweep"]["sweep"]["grid"]["loss"] == ["logistic", "hinge"]
    assert sorted(summary["figures"]) == sorted(FIGURES)
    assert len(summary["runs"]) == 4
    for row in summary["runs"]:
        final = row["final"]
        for key in ("win_rate", "win_rate_se", "kl", "mu_sq_loss", "loss", "rewards/accuracies"):
            assert isinstance(final[key], float) and math.isfinite(final[key]), (row["name"], key)
        assert 0 <= row["peak_win_rate_p90"] <= 1 and math.isfinite(row["median_kl"])
    sbs = summary["side_by_side"]
    assert sbs["beta"] == 0.1 and sbs["losses"] == ["hinge", "logistic"]
    rate = sbs["win_rate"]
    # The gold judge is antisymmetric: row vs column and column vs row sum to 1.
    assert rate[0][1] + rate[1][0] == pytest.approx(1.0)
    assert set(summary["spearman_per_beta"]) == {"0.1", "1"}
    table = (tmp_path / "report.md").read_text()
    for loss in ("logistic", "hinge"):
        assert sum(line.startswith(f"| {loss} | 0.1 | ") for line in table.splitlines()) == 1
        assert sum(line.startswith(f"| {loss} | 1 | ") for line in table.splitlines()) == 1


def test_tiny_sft_learns_is_reloadable_and_is_reused(tmp_path, tiny_data_file, capsys) -> None:
    from transformers import AutoModelForCausalLM

    from gpo.experiments.sft import SftConfig, train_tiny_sft

    cfg = SftConfig(data=str(tiny_data_file), steps=40, batch_size=8, learning_rate=1e-2, hidden=32)
    out = train_tiny_sft(cfg, tmp_path / "sft", progress=False)
    info = json.loads((out / "sft.json").read_text())
    assert info["unk_fraction"] == 0  # the vocabulary covers the data
    assert info["initial_token_nll"] == pytest.approx(math.log(info["vocab"]), rel=0.1)
    assert info["final_token_nll"] < 0.7 * info["initial_token_nll"]
    AutoModelForCausalLM.from_pretrained(out)
    capsys.readouterr()
    train_tiny_sft(cfg, out)
    assert "reusing" in capsys.readouterr().out


def test_a_saved_opponent_is_sampled_like_the_same_reference(tiny_model_dir, tmp_path) -> None:
    from gpo.eval.win_rate import sample_opponent
    from gpo.models.loading import frozen_copy, load_model_and_tokenizer
    from gpo.models.reference import Reference
    from gpo.models.sampling import encode_chat_prompts
    from gpo.models.tiny import tiny_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    ids = encode_chat_prompts(tok, ["tell me a fact about a cat", "write about the sea"])
    ref = Reference(model, frozen=frozen_copy(model))
    from_path = sample_opponent(str(tiny_model_dir), None, tok, ids, 8, seed=3)
    assert from_path == sample_opponent(None, ref, tok, ids, 8, seed=3)
    assert from_path != sample_opponent(None, ref, tok, ids, 8, seed=4)  # the seed matters
    other, other_tok = tiny_model_and_tokenizer(["some", "other", "words"])
    other.save_pretrained(tmp_path)
    other_tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="different tokenizer"):
        sample_opponent(str(tmp_path), None, tok, ids, 8, seed=3)


def test_pi_refs_opponent_samples_are_cached_for_the_next_run(
    tiny_model_dir, tmp_path, monkeypatch
) -> None:
    """Sampled once per (reference, prompts, seed): a second run reads them back (the sampler is
    not called), another seed or prompt set samples anew, a damaged file is sampled again."""
    import gpo.eval.win_rate as win_rate
    from gpo.models.loading import frozen_copy, load_model_and_tokenizer
    from gpo.models.reference import Reference
    from gpo.models.sampling import encode_chat_prompts

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    ids = encode_chat_prompts(tok, ["tell me a fact about a cat", "write about the sea"])
    ref = Reference(model, frozen=frozen_copy(model))
    cache = tmp_path / "ref-cache"
    first = win_rate.sample_opponent(None, ref, tok, ids, 8, seed=3, cache_dir=cache)
    assert first == win_rate.sample_opponent(None, ref, tok, ids, 8, seed=3)  # same draws
    files = list(cache.glob("opponent-*.json"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))

    calls = []
    real = win_rate.sample

    def counting(*args, **kwargs):
        calls.append(kwargs.get("seed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(win_rate, "sample", counting)
    assert win_rate.sample_opponent(None, ref, tok, ids, 8, seed=3, cache_dir=cache) == first
    assert calls == []
    win_rate.sample_opponent(None, ref, tok, ids, 8, seed=4, cache_dir=cache)
    win_rate.sample_opponent(None, ref, tok, ids[:1], 8, seed=3, cache_dir=cache)
    assert calls == [4, 3] and len(list(cache.glob("opponent-*.json"))) == 3
    files[0].write_text("{not json")
    assert win_rate.sample_opponent(None, ref, tok, ids, 8, seed=3, cache_dir=cache) == first
    assert calls == [4, 3, 3]


def test_sigterm_stops_the_running_run_too(tmp_path, monkeypatch) -> None:
    """A stopped sweep must not leave its run going: it would race the resumed sweep."""
    import signal
    import threading
    import time

    from gpo.experiments import sweep as sweep_mod

    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(99)"
    cmd = [sys.executable, "-c", child]
    monkeypatch.setattr(sweep_mod, "command", lambda run, prefix=None: cmd)
    runs = [sweep_mod.Run("r", tmp_path / "r", TrainConfig(), {})]

    def term_when_started() -> None:
        deadline = time.monotonic() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=term_when_started, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(sweep_mod.SweepInterrupted, match="r") as info:
        sweep_mod.execute(runs, jobs=1)
    assert info.value.exit_code == 143
    assert time.monotonic() - t0 < 60  # not the child's 99 s sleep
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(int(pid_file.read_text()), 0)
    assert signal.getsignal(signal.SIGTERM) == before


SECRET = "hunter2-s3cret"
JUDGE = f"http:base_url=https://bob:{SECRET}@judge.example/v1,model=m"
MASKED = "http:base_url=https://***@judge.example/v1,model=m"


def test_sweep_passes_judge_credentials_in_the_environment_not_argv(tmp_path, monkeypatch) -> None:
    """Issue 27: /proc/PID/cmdline is world-readable, so a run's argv must not hold the judge's
    key; it travels in the run's environment (/proc/PID/environ: its owner only)."""
    from gpo.experiments import sweep as sweep_mod

    runs = plan(
        SweepConfig(base={"judge": JUDGE, "judge_prompts": 2}, grid={"beta": [0.1]}), tmp_path
    )
    started: list[tuple[list[str], dict[str, str]]] = []

    class Done:  # a run that ends at once
        returncode = 0

        def __init__(self, cmd: list[str], env: dict[str, str], **_: object) -> None:
            started.append((cmd, env))

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(sweep_mod.subprocess, "Popen", Done)
    sweep_mod.execute(runs, jobs=1)
    ((cmd, env),) = started
    assert not any(SECRET in arg for arg in cmd), cmd
    assert MASKED in cmd
    assert json.loads(env.get("GPO_TRAIN_SECRET_OPTIONS", "{}")) == {"judge": JUDGE}


def test_gpo_train_takes_the_sweeps_options_from_the_environment(monkeypatch, tmp_path) -> None:
    import gpo.train.trainer as trainer

    seen: list[TrainConfig] = []
    monkeypatch.setattr(trainer, "train", lambda cfg: seen.append(cfg) or {"run_dir": "x"})
    monkeypatch.setenv("GPO_TRAIN_SECRET_OPTIONS", json.dumps({"judge": JUDGE}))
    assert main(["train", "--judge", MASKED, "--out", str(tmp_path / "r")]) == 0
    assert seen[0].judge == JUDGE
    assert "GPO_TRAIN_SECRET_OPTIONS" not in os.environ  # not inherited by what the run starts
