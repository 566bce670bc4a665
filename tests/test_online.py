"""``gpo train --online`` (issue 31, part 1): pairs sampled from the policy each step, labelled by
a judge, trained on with any objective; ``RUN/online_pairs.jsonl``; exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import online_judges
import pytest
import torch
from transformers import AutoTokenizer

from gpo.train.config import TrainConfig
from gpo.train.online import ONLINE_PAIRS, JudgeFailed, first_wins, stream_seed
from gpo.train.run_record import delete_recorded
from gpo.train.trainer import Trainer, train

#: Short completions and no evaluation: each run is a few seconds on the tiny model.
FAST = {"online": True, "max_new_tokens": 6, "eval_steps": 0}
KEYS = {"prompt", "chosen", "rejected", "score", "step"}
ONLINE_METRICS = {
    "online/judge_score",
    "online/ties",
    "online/completion_tokens",
    "online/kl",
    "online/seconds_sample",
    "online/seconds_judge",
    "online/seconds_ref",
    "online/seconds_train",
}


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / ONLINE_PAIRS).read_text().splitlines()]


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _timeless(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics without the wall-clock ones (they differ between any two runs)."""
    return [{k: v for k, v in m.items() if "seconds" not in k} for m in metrics]


@pytest.fixture(autouse=True)
def _fresh_calls():
    online_judges.CALLS.clear()
    yield
    online_judges.CALLS.clear()


def test_three_steps_with_the_gold_judge(tiny_config: Any, tmp_path: Path) -> None:
    summary = train(tiny_config("run", max_steps=3, **FAST))
    run = tmp_path / "run"
    rows = _rows(run)
    assert len(rows) == 3 * 4 and [r["step"] for r in rows] == [1] * 4 + [2] * 4 + [3] * 4
    for r in rows:
        assert set(r) >= KEYS and isinstance(r["prompt"], str)
        assert isinstance(r["chosen"], str) and isinstance(r["rejected"], str)
        assert 0.0 <= r["score"] <= 1.0
    assert summary["online"] is True
    assert summary["online_judge_score"] == pytest.approx(sum(r["score"] for r in rows) / 12)
    assert {"train", "eval", "steps", "train_seconds", "run_dir"} <= set(summary)
    per_step = [m for m in _metrics(run) if "online/kl" in m]
    assert [m["step"] for m in per_step] == [1, 2, 3]
    for m in per_step:
        assert set(m) == {"step", *ONLINE_METRICS} and all(math.isfinite(v) for v in m.values())
    assert per_step[0]["online/kl"] == 0.0  # step 1 samples pi_ref itself (LoRA B = 0)
    assert all(m["online/seconds_ref"] > 0 for m in per_step)  # pi_ref scored every step
    assert json.loads((run / "summary.json").read_text())["online"] is True
    assert "online_pairs.jsonl" in delete_recorded(run)  # recorded: --overwrite deletes it
    assert not (run / ONLINE_PAIRS).exists()


@pytest.mark.parametrize(
    "loss", ["logistic", "square", "fdpo:js", "iupo:js", "user_losses:smooth_hinge"]
)
def test_every_objective_kind_trains_online(tiny_config: Any, tmp_path: Path, loss: str) -> None:
    summary = train(tiny_config(loss.replace(":", "-"), loss=loss, max_steps=1, **FAST))
    assert math.isfinite(summary["train"]["loss"])
    assert len(_rows(tmp_path / loss.replace(":", "-"))) == 4


@pytest.mark.parametrize("judge", ["always_first", "always_second"])
def test_a_user_judge_is_asked_and_its_probability_sets_the_labels(
    tiny_config: Any, tmp_path: Path, judge: str
) -> None:
    """Each (prompt, first, second) the judge saw became a row: a judge sure that ``first``
    wins keeps ``first`` as chosen, one sure that it loses keeps ``second``."""
    train(tiny_config("run", max_steps=2, online_judge=f"online_judges:{judge}", **FAST))
    rows, calls = _rows(tmp_path / "run"), online_judges.CALLS
    assert len(calls) == len(rows) == 8
    eos = AutoTokenizer.from_pretrained(tiny_config("x").model).eos_token
    for row, (prompt, first, second) in zip(rows, calls, strict=True):
        assert row["prompt"] == prompt and row["score"] == 1.0
        won, lost = (first, second) if judge == "always_first" else (second, first)
        # (an empty finished completion is written as the EOS string: see pair_row)
        assert (row["chosen"], row["rejected"]) == (won or eos, lost or eos)


def test_hard_labels_follow_the_probability() -> None:
    """The winner is drawn with the judge's probability: 1 and 0 are certain, 0.3 wins 30%."""
    assert first_wins([1.0, 0.0] * 50, 7) == [True, False] * 50
    wins = sum(first_wins([0.3] * 20000, 11))
    assert abs(wins / 20000 - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 20000)
    assert first_wins([0.5] * 64, 3) == first_wins([0.5] * 64, 3)  # seeded
    seeds = {stream_seed(0, s, r, m, k) for s in (1, 2) for r in (0, 1) for m in (0, 1)
             for k in ("sample", "labels")}  # fmt: skip
    assert len(seeds) == 16


@pytest.mark.parametrize(("judge", "bad"), [("nan_judge", "nan"), ("too_big", "1.5")])
def test_a_bad_score_stops_the_run_naming_the_prompt(
    tiny_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], judge: str, bad: str
) -> None:
    from gpo.cli import main

    cfg = tiny_config("run", max_steps=2, online_judge=f"online_judges:{judge}", **FAST)
    argv = ["train", "--online", "--online-judge", cfg.online_judge, "--eval-steps", "0"]
    argv += ["--max-new-tokens", "6", "--max-steps", "2", "--model", cfg.model, "--data", cfg.data]
    argv += ["--out", cfg.out, "--batch-size", "4", "--progress", "false", "--report-to", "none"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    assert err.startswith(f"gpo: error: online judge 'online_judges:{judge}' failed at step 1")
    assert f"returned {bad} for prompt" in err and "scores outside [0, 1]" in err
    prompt = err.split(" for prompt ")[1].split("(", 1)[1].split(")")[0]
    data_prompts = {json.loads(x)["prompt"] for x in Path(cfg.data).read_text().splitlines()}
    assert prompt.strip("'") in data_prompts  # the prompt is named, as in the data
    assert not (tmp_path / "run" / ONLINE_PAIRS).exists()  # no label was made up


def test_a_failing_judge_stops_with_a_checkpoint(tiny_config: Any, tmp_path: Path) -> None:
    cfg = tiny_config("run", max_steps=4, online_judge="online_judges:down_from_step_3", **FAST)
    with pytest.raises(JudgeFailed) as info:
        Trainer(cfg).run()
    message = str(info.value)
    assert message.startswith("online judge 'online_judges:down_from_step_3' failed at step 3")
    assert "ConnectionError: judge server unreachable" in message
    assert "checkpoint of step 2 written: --resume continues from it" in message
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "state.json").is_file()
    assert [r["step"] for r in _rows(tmp_path / "run")] == [1] * 4 + [2] * 4


def test_resume_after_an_interruption_is_exact(tiny_config: Any, tmp_path: Path) -> None:
    """Interrupted after step 3 (its pairs written, no checkpoint past step 2), then resumed:
    the same pairs, metrics and final weights, bit for bit, as an uninterrupted run."""
    from safetensors.torch import load_file

    kw = {**FAST, "max_steps": 4, "save_steps": 2, "save_final": True}

    class Killed(Exception):
        pass

    def kill_after_step_3(step: int, seconds: float) -> None:
        if step == 3:
            raise Killed

    whole = train(tiny_config("whole", **kw))
    with pytest.raises(Killed):
        Trainer(tiny_config("cut", **kw), callbacks=[kill_after_step_3]).run()
    assert max(r["step"] for r in _rows(tmp_path / "cut")) == 3
    cut = train(tiny_config("cut", resume=True, **kw))
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")
    assert _timeless(_metrics(tmp_path / "cut")) == _timeless(_metrics(tmp_path / "whole"))
    assert cut["online_judge_score"] == whole["online_judge_score"]
    a = load_file(tmp_path / "whole" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_online_refuses_an_explicit_ref_cache_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gpo.cli import main

    with pytest.raises(ValueError, match=r"ref_cache .* with online: the reference log-prob cache"):
        TrainConfig(online=True, ref_cache=str(tmp_path / "cache"))
    TrainConfig(online=True, ref_cache="none")
    assert TrainConfig(online=True).ref_cache == "auto"  # auto: off with online
    argv = ["train", "--online", "--ref-cache", str(tmp_path / "cache"), "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("gpo: error: config: ref_cache")


def test_online_pairs_train_offline_with_data(tiny_config: Any, tmp_path: Path) -> None:
    train(tiny_config("online", max_steps=3, **FAST))
    pairs = tmp_path / "online" / ONLINE_PAIRS
    summary = train(tiny_config("offline", data=str(pairs), max_steps=2, eval_steps=0))
    assert math.isfinite(summary["train"]["loss"]) and "online" not in summary
    config = json.loads((tmp_path / "offline" / "config.json").read_text())
    assert config["data"] == str(pairs) and config["online"] is False


@pytest.mark.slow
def test_kill_9_inside_a_checkpoint_then_resume_is_exact(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path
) -> None:
    """A real ``kill -9`` (``GPO_FAULT``, tests/test_faults.py) inside the step-4 checkpoint of
    a ``gpo train --online`` process, after the pairs of steps 1-4 were written: ``--resume``
    continues from step 2 and ends with the uninterrupted run's rows, metrics and weights."""
    import os
    import signal
    import subprocess
    import sys

    from safetensors.torch import load_file

    def gpo(out: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        env.pop("GPO_FAULT", None)
        if fault:
            env["GPO_FAULT"] = fault
        argv = ["--model", str(tiny_model_dir), "--data", str(tiny_data_file), "--out", str(out)]
        argv += ["--online", "--max-new-tokens", "6", "--eval-steps", "0", "--batch-size", "4"]
        argv += ["--max-steps", "5", "--save-steps", "2", "--logging-steps", "1"]
        argv += ["--kl-prompts", "0", "--progress", "false", "--report-to", "none"]
        cmd = [sys.executable, "-m", "gpo.cli", "train", *argv, *extra]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert gpo(whole).returncode == 0
    killed = gpo(cut, fault="kill:weights:4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert max(r["step"] for r in _rows(cut)) == 4  # rows past the last whole checkpoint
    resumed = gpo(cut, "--resume")
    assert resumed.returncode == 0 and "resuming at step 2" in resumed.stdout, resumed.stderr
    assert _rows(cut) == _rows(whole)
    assert _timeless(_metrics(cut)) == _timeless(_metrics(whole))
    a = load_file(whole / "final" / "adapter_model.safetensors")
    b = load_file(cut / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_user_judge_spec_resolves_for_both_judge_flags(tiny_config: Any, tmp_path: Path) -> None:
    from gpo.eval.judges import CallableJudge, parse_judge_spec, resolve_judge

    judge = resolve_judge("online_judges:always_first")
    assert isinstance(judge, CallableJudge) and judge.name == "online_judges:always_first"
    assert judge(["p"], ["a"], ["b"]) == [1.0]
    assert parse_judge_spec("online_judges:always_first") == ("online_judges:always_first", {})
    assert parse_judge_spec("http:base_url=http://h/v1,model=m")[0] == "http"
    with pytest.raises(ValueError, match="cannot import module 'no_such_judges' for judge"):
        resolve_judge("no_such_judges:judge")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        resolve_judge("online_judges:nope")
    # A judge that cannot be built fails before the run folder is written to.
    with pytest.raises(ValueError, match="cannot import module 'no_such_judges'"):
        Trainer(tiny_config("run", online_judge="no_such_judges:judge", **FAST))
    assert not (tmp_path / "run").exists()


def test_kl_target_steers_an_online_run(tiny_config: Any, tmp_path: Path) -> None:
    """``--kl-target`` works online: beta is steered from the online steps' rho and KL
    measurements on held-out prompts (whether it meets the target is docs/kl-control.md's)."""
    kl = {"kl_target": 1.0, "kl_control_min_steps": 1, "kl_control_steps": 2}
    cfg = tiny_config("run", max_steps=3, kl_control_prompts=2, eval_fraction=0.1, **kl, **FAST)
    summary = train(cfg)
    assert summary["online"] is True and summary["kl_target"] == 1.0
    assert math.isfinite(summary["final_beta"]) and summary["final_beta"] != cfg.beta
    steered = [m for m in _metrics(tmp_path / "run") if "kl_control/beta" in m]
    assert steered and len(_rows(tmp_path / "run")) == 12


def _two_processes(model: Path, data: Path, run: Path, *extra: str) -> None:
    """``gpo train --online`` on 2 gloo processes (configs/accelerate/multi_cpu.yaml), batch 2,
    3 steps; tests/ is on their path (its judges)."""
    import os
    import shutil
    import subprocess
    import sys

    from test_train import _free_port

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    config = Path(__file__).parents[1] / "configs" / "accelerate" / "multi_cpu.yaml"
    cmd = [str(accelerate), "launch", "--config_file", str(config)]
    cmd += ["--main_process_port", str(_free_port()), "-m", "gpo.cli", "train"]
    cmd += ["--model", str(model), "--data", str(data), "--out", str(run)]
    cmd += ["--online", "--max-new-tokens", "6", "--eval-steps", "0", "--max-steps", "3"]
    cmd += ["--batch-size", "2", "--logging-steps", "1", "--kl-prompts", "0"]
    cmd += ["--progress", "false", "--report-to", "none", *extra]
    path = os.pathsep.join(
        p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_each_sample_their_share(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path
) -> None:
    """Each process samples and judges its own 2 prompts, and the main process writes all 4
    rows of every step."""
    run = tmp_path / "two"
    _two_processes(tiny_model_dir, tiny_data_file, run)
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1] * 4 + [2] * 4 + [3] * 4
    data_prompts = {json.loads(x)["prompt"] for x in tiny_data_file.read_text().splitlines()}
    assert {r["prompt"] for r in rows} <= data_prompts
    per_step = [m for m in _metrics(run) if "online/kl" in m]
    assert [m["step"] for m in per_step] == [1, 2, 3]
    train_lines = [m for m in _metrics(run) if "loss" in m]
    for m, online in zip(train_lines, per_step, strict=True):  # tokens: all 4 pairs, 8 samples
        prompts = m["tokens"] - 8 * online["online/completion_tokens"]
        assert prompts >= 4 and prompts == pytest.approx(round(prompts), abs=1e-6)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["online"] is True
    assert summary["online_judge_score"] == pytest.approx(sum(r["score"] for r in rows) / 12)


@pytest.mark.slow
def test_two_processes_train_on_soft_labels(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path
) -> None:
    """Soft labels on 2 processes: each judges its own 2 prompts (the graded judge restarts its
    0.9, 0.2, ... on each), every row keeps the more likely one as chosen."""
    run = tmp_path / "soft"
    judge = ["--online-judge", "soft_judges:graded", "--online-labels", "soft"]
    _two_processes(tiny_model_dir, tiny_data_file, run, *judge)
    assert [r["score"] for r in _rows(run)] == [0.9, 0.8, 0.9, 0.8] * 3
    losses = [m["loss"] for m in _metrics(run) if "loss" in m]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def test_online_kl_uses_sequence_log_ratios_whatever_the_reduction() -> None:
    """``online/kl`` averages ``logratio_*``: summed over tokens even with per-token means."""
    from gpo.eval.pairs import pair_values
    from gpo.losses.family import PreferenceLoss
    from gpo.models.logps import SequenceLogps

    sums_pol, sums_ref = torch.tensor([-6.0, -4.0]), torch.tensor([-5.0, -6.0])
    tokens = torch.tensor([3, 2])
    out = PreferenceLoss(torch.zeros(1), torch.zeros(1))
    for reduction, scale in (("sum", torch.ones(2)), ("mean", tokens.float())):
        pol = SequenceLogps(sums_pol / scale, tokens, torch.zeros(2))
        ref = SequenceLogps(sums_ref / scale, tokens, torch.zeros(2))
        values = pair_values(out, pol, ref, 0.1, reduction)
        assert values["logratio_chosen"].tolist() == pytest.approx([-1.0], abs=1e-6)
        assert values["logratio_rejected"].tolist() == pytest.approx([2.0], abs=1e-6)


def test_conversational_prompts_give_conversational_rows(tiny_config: Any, tmp_path: Path) -> None:
    """Message-list prompts (rendered by the tokenizer's chat template): the judge gets the
    user's text, the rows keep the messages with assistant replies, and they train offline."""
    data = tmp_path / "conv.jsonl"
    with open(data, "w") as f:
        for i in range(12):
            user = [{"role": "user", "content": f"tell me about the sea {i}"}]
            reply = [{"role": "assistant", "content": c} for c in ("good sea", "bad rain")]
            f.write(json.dumps({"prompt": user, "chosen": [reply[0]], "rejected": [reply[1]]}))
            f.write("\n")
    judge = "online_judges:always_first"
    train(tiny_config("run", data=str(data), max_steps=2, online_judge=judge, **FAST))
    rows = _rows(tmp_path / "run")
    assert len(rows) == 8
    for row, (prompt, first, _) in zip(rows, online_judges.CALLS, strict=True):
        assert row["prompt"][-1]["role"] == "user" and row["prompt"][-1]["content"] == prompt
        assert [m["role"] for m in row["chosen"] + row["rejected"]] == ["assistant"] * 2
        assert row["chosen"][0]["content"] == first
    pairs = str(tmp_path / "run" / ONLINE_PAIRS)
    summary = train(tiny_config("offline", data=pairs, max_steps=1, eval_fraction=0.0))
    assert math.isfinite(summary["train"]["loss"])


def test_ipo_md_samples_from_the_mixture_with_pi_ref(
    tiny_config: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """--online-mixture A: every step's samples are drawn through the decode loop's geometric
    mixture (gpo.models.decode.Mixture, tested against brute force in test_decode_mixture.py),
    whose reference is the run's pi_ref (the LoRA policy with its adapters off); the mean log
    ratio of those samples is logged, not as a KL."""
    import gpo.train.online as online

    seen: list[Any] = []
    real = online.sample

    def adapters_off(model: Any) -> bool:  # every LoRA layer switched off?
        flags = [m.disable_adapters for m in model.modules() if hasattr(m, "lora_A")]
        return bool(flags) and all(flags)

    def spy(*args: Any, **kwargs: Any) -> Any:
        mixture, model = kwargs.get("mixture"), args[0]
        assert mixture is not None and mixture.alpha == 0.5
        with mixture.reference() as ref:
            seen.append((ref is model, adapters_off(ref)))
        assert not adapters_off(model)  # on again for the policy's own steps
        return real(*args, **kwargs)

    monkeypatch.setattr(online, "sample", spy)
    train(tiny_config("run", max_steps=2, online_mixture=0.5, **FAST))
    assert seen == [(True, True), (True, True)]  # the same module, its adapters off inside
    per_step = [m for m in _metrics(tmp_path / "run") if "online/judge_score" in m]
    assert all("online/mixture_log_ratio" in m and "online/kl" not in m for m in per_step)
    assert len(_rows(tmp_path / "run")) == 2 * 4
    with pytest.raises(ValueError, match="online_mixture needs online"):
        TrainConfig(online_mixture=0.5)
    with pytest.raises(ValueError, match=r"online_mixture = 1\.0 is out of range: must be in"):
        TrainConfig(online=True, online_mixture=1.0)


@pytest.mark.parametrize(("data", "version"), [("gold", 1), ("gold-v2", 2)])
def test_the_gold_online_judge_is_the_tasks_own_version(data: str, version: int) -> None:
    from gpo.eval.judges import GoldJudge
    from gpo.train.online import resolve_online_judge

    judge = resolve_online_judge(TrainConfig(data=data, online=True))
    assert isinstance(judge, GoldJudge) and judge.version == version
