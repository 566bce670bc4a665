import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from draws import exact_next_token_kl

from gpo.train.config import TrainConfig
from gpo.train.setup import micro_batches
from gpo.train.trainer import train

QUIET = {
    "progress": False,
    "report_to": ["none"],
    "kl_prompts": 2,
    "kl_samples": 2,
    "max_new_tokens": 6,
}


def _cfg(model_dir, data_file, out, **kw):
    base = dict(
        model=str(model_dir),
        data=str(data_file),
        out=str(out),
        finetune="full",
        batch_size=4,
        learning_rate=3e-3,
        max_steps=24,
        logging_steps=4,
        eval_steps=12,
        save_steps=0,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        **QUIET,
    )
    base.update(kw)
    return TrainConfig(**base)


def _metrics(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def _train_losses(run):
    return [m["loss"] for m in _metrics(run) if "loss" in m]


@pytest.mark.parametrize("loss", ["logistic", "fdpo:js", "iupo:js"])
def test_each_family_learns(tiny_model_dir, tiny_data_file, tmp_path, loss):
    # One-token completions for the on-policy KL: then KL(pi_theta || pi_ref) is a finite sum
    # over the vocabulary, computed exactly below from the saved policy and the initial model.
    one_token = {"kl_samples": 4000, "max_new_tokens": 1}
    cfg = _cfg(tiny_model_dir, tiny_data_file, tmp_path / loss, loss=loss, beta=0.5, **one_token)
    summary = train(cfg)
    rows = [m for m in _metrics(tmp_path / loss) if "loss" in m]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["rewards/accuracies"] > max(0.6, rows[0]["rewards/accuracies"])

    from gpo.models.loading import load_model_and_tokenizer
    from gpo.train.setup import prepare

    policy, tok = load_model_and_tokenizer(str(tmp_path / loss / "final"))
    ref, _ = load_model_and_tokenizer(str(tiny_model_dir))
    prompts = [p.prompt_ids for p in prepare(cfg, tok).eval[: cfg.kl_prompts]]  # as evaluated
    truth = exact_next_token_kl(policy, ref, prompts)
    kl, se = summary["eval"]["eval/kl"], summary["eval"]["eval/kl_se"]
    assert truth > 6 * se, (truth, se)  # the policy moved: an estimate of 0 cannot pass below
    assert abs(kl - truth) < 4 * se, (kl, se, truth)
    for name in ("summary.json", "config.json", "training.png", "kl_vs_mu_sq.png"):
        assert (tmp_path / loss / name).exists()
    assert (tmp_path / loss / "final" / "model.safetensors").exists()


def test_kl_estimator_token_gives_the_exact_one_token_kl(tiny_model_dir, tiny_data_file, tmp_path):
    """``kl_estimator: token`` reaches the evaluation: with one-token completions each sample
    carries its prompt's exact next-token KL, so ``eval/kl`` is the exact mean over the prompts
    from 2 samples each (the log-ratio estimator would need thousands, as above)."""
    from gpo.models.loading import load_model_and_tokenizer
    from gpo.train.setup import prepare

    cfg = _cfg(tiny_model_dir, tiny_data_file, tmp_path / "tok", max_steps=8, eval_steps=8,
               max_new_tokens=1, kl_prompts=4, kl_estimator="token")  # fmt: skip
    summary = train(cfg)
    policy, tok = load_model_and_tokenizer(str(tmp_path / "tok" / "final"))
    ref, _ = load_model_and_tokenizer(str(tiny_model_dir))
    prompts = [p.prompt_ids for p in prepare(cfg, tok).eval[: cfg.kl_prompts]]
    truth = exact_next_token_kl(policy, ref, prompts)
    assert truth > 1e-3  # the policy moved; the log-ratio estimate of 8 draws is off by ~100%
    assert summary["eval"]["eval/kl"] == pytest.approx(truth, rel=1e-3)


def test_lora_run_saves_adapter_and_reference_is_base(tiny_model_dir, tiny_data_file, tmp_path):
    train(
        _cfg(
            tiny_model_dir,
            tiny_data_file,
            tmp_path,
            finetune="lora",
            max_steps=8,
            eval_steps=8,
            learning_rate=1e-2,
        )
    )
    m = _metrics(tmp_path)
    # Step-0 reference = policy (LoRA B starts at 0), so the first loss is log 2 exactly-ish.
    assert abs(m[0]["loss"] - 0.6931) < 0.02
    assert (tmp_path / "final" / "adapter_model.safetensors").exists()
    from peft import AutoPeftModelForCausalLM

    AutoPeftModelForCausalLM.from_pretrained(tmp_path / "final")


def test_micro_batches_are_a_seeded_permutation_per_epoch():
    gen = micro_batches(10, 5, seed=3, start=0)
    got = [next(gen)[1] for _ in range(4)]
    assert sorted(got[0] + got[1]) == list(range(10))
    assert sorted(got[2] + got[3]) == list(range(10))
    assert got[:2] != got[2:]  # a new order each epoch
    resumed = next(micro_batches(10, 5, seed=3, start=3))
    assert resumed == (3, got[3])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return [sys.executable, "-m", "gpo.cli", "train", *args], env


def _cli_args(model_dir, data_file, out, steps):
    return [
        "--model",
        str(model_dir),
        "--data",
        str(data_file),
        "--out",
        str(out),
        "--finetune",
        "full",
        "--batch-size",
        "4",
        "--learning-rate",
        "3e-3",
        "--max-steps",
        str(steps),
        "--logging-steps",
        "2",
        "--eval-steps",
        "0",
        "--save-steps",
        "4",
        "--progress",
        "false",
        "--report-to",
        "none",
        "--lr-scheduler",
        "cosine",
    ]


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_curve(tiny_model_dir, tiny_data_file, tmp_path):
    steps = 40
    cmd, env = _cli(*_cli_args(tiny_model_dir, tiny_data_file, tmp_path / "full", steps))
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)

    run = tmp_path / "killed"
    cmd, env = _cli(*_cli_args(tiny_model_dir, tiny_data_file, run, steps))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step-000004" / "state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before a checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists()

    subprocess.run([*cmd, "--resume"], env=env, check=True, capture_output=True, timeout=600)
    assert _train_losses(run) == _train_losses(tmp_path / "full")


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_double_batch(tiny_model_dir, tiny_data_file, tmp_path):
    """Also the fast paths under DDP against the plain ones: the two processes share prompts,
    cache pi_ref and use fused AdamW (defaults); the single process does none of these."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    config = Path(__file__).parents[1] / "configs" / "accelerate" / "multi_cpu.yaml"
    common = [
        "--model",
        str(tiny_model_dir),
        "--data",
        str(tiny_data_file),
        "--finetune",
        "full",
        "--learning-rate",
        "3e-3",
        "--max-steps",
        "6",
        "--logging-steps",
        "1",
        "--eval-steps",
        "3",
        "--kl-prompts",
        "0",
        "--save-steps",
        "0",
        "--progress",
        "false",
        "--report-to",
        "none",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = [
        sys.executable,
        "-m",
        "gpo.cli",
        "train",
        *common,
        "--batch-size",
        "4",
        "--out",
        str(tmp_path / "one"),
        *("--share-prompt", "false", "--ref-cache", "none", "--optim", "adamw"),
    ]
    launch = [
        accelerate,
        "launch",
        "--config_file",
        str(config),
        "--main_process_port",
        str(_free_port()),
    ]
    two = [*launch, "-m", "gpo.cli", "train", *common, "--batch-size", "2"]
    two += ["--out", str(tmp_path / "two")]
    subprocess.run(one, env=env, check=True, capture_output=True, timeout=300)
    subprocess.run(two, env=env, check=True, capture_output=True, timeout=300)
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(a) == len(b)  # only rank 0 wrote
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-5), k


def test_gradient_accumulation_equals_the_whole_batch_in_one_micro_step(tiny_config):
    """2 micro-steps of 2 pairs = 1 of 4: the update happens once, after the last micro-step,
    with the accumulated gradient (and the gradients are cleared only then)."""
    common = dict(max_steps=4, learning_rate=3e-3, lr_scheduler="constant", warmup_ratio=0.0)
    common.update(eval_steps=0, ref_cache="none", finetune="full")
    whole = train(tiny_config("whole", batch_size=4, **common))
    accum = train(tiny_config("accum", batch_size=2, gradient_accumulation_steps=2, **common))
    logs = []
    for summary in (whole, accum):
        lines = Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()
        logs.append([r for r in map(json.loads, lines) if "loss" in r])
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [1, 2, 3, 4]
    for a, b in zip(*logs, strict=True):
        for key in ("loss", "grad_norm", "rewards/margins"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert logs[0][-1]["loss"] != pytest.approx(logs[0][0]["loss"], abs=1e-4)  # it trained


def test_unshuffled_order_callbacks_and_no_final_model(tiny_model_dir, tiny_data_file, tmp_path):
    from gpo.train.trainer import Trainer

    gen = micro_batches(10, 4, seed=0, start=0, shuffle=False)
    assert [next(gen)[1] for _ in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]

    seen: list[tuple[int, float]] = []
    cfg = _cfg(
        tiny_model_dir,
        tiny_data_file,
        tmp_path,
        max_steps=3,
        eval_steps=0,
        shuffle=False,
        save_final=False,
    )
    Trainer(cfg, callbacks=[lambda step, seconds: seen.append((step, seconds))]).run()
    assert [s for s, _ in seen] == [1, 2, 3]
    times = [t for _, t in seen]
    assert times == sorted(times) and times[0] >= 0
    assert not (tmp_path / "final").exists()
    assert (tmp_path / "summary.json").exists()


def test_final_gold_win_rate_is_an_ordinary_gold_judge_evaluation(tiny_config):
    """On gold data the final evaluation samples the policy and pi_ref on held-out prompts and
    judges them with the gold judge through the one win-rate path: its saved rows re-judge to
    the same scores, and the summary is their mean and standard error."""
    from gpo.eval.judges import GoldJudge
    from gpo.io import read_jsonl
    from gpo.stats import mean_se

    cfg = tiny_config("gold", data="gold", max_steps=1, eval_steps=0, eval_max_pairs=4)
    cfg.gold_eval_prompts, cfg.max_new_tokens = 6, 5
    summary = train(cfg)
    rows = read_jsonl(Path(cfg.out) / "samples" / "final-gold.jsonl")
    assert len(rows) == 6
    prompts = [r["prompt"] for r in rows]
    scores = GoldJudge()(prompts, [r["policy"] for r in rows], [r["opponent"] for r in rows])
    assert [r["score"] for r in rows] == scores
    rate, se = mean_se(scores)
    assert summary["gold_win_rate"] == rate
    assert summary["gold_win_rate_se"] == pytest.approx(se, nan_ok=True)
