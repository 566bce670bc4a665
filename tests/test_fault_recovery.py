"""Faults, round 2 (issue 13, items 5-9): real write failures (RLIMIT_FSIZE) in checkpoints and
the reference cache, a half-written metrics line, final/ written atomically, a checkpoint that
fails to load changes nothing, and resume is exact with LoRA dropout and sampling evals."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from gpo.cli import main
from gpo.train.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from gpo.train.tracking import read_metrics
from gpo.train.trainer import Trainer

#: Run in a child process whose files may not grow past LIMIT bytes (EFBIG, SIGXFSZ ignored):
#: a real write failure, as a full disk gives, raised by whatever library is writing.
LIMITED = """
import resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
def limit(n):
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, resource.RLIM_INFINITY))
"""

CHECKPOINT = """
import torch
from gpo.models.tiny import tiny_model_and_tokenizer
from gpo.train.checkpoint import CheckpointError, save_checkpoint
model, tok = tiny_model_and_tokenizer(seed=0)
opt = torch.optim.AdamW(model.parameters())
model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
opt.step()
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
run = Path(sys.argv[1])
first = save_checkpoint(run, 1, model, opt, sched, {}, 2, tok)
weights = (first / "model.safetensors").stat().st_size
limit({"weights": weights // 2, "optimizer": weights + 4096}[sys.argv[2]])
try:
    save_checkpoint(run, 2, model, opt, sched, {}, 2, tok)
except CheckpointError as e:
    print("CheckpointError:", e)
"""


def _limited(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(LIMITED) + textwrap.dedent(code)
    return subprocess.run(  # cwd: not the checkout, so `gpo` is the installed one
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300, cwd="/"
    )


@pytest.mark.parametrize(
    ("where", "raised"), [("weights", "SafetensorError"), ("optimizer", "RuntimeError")]
)
def test_a_real_write_failure_in_a_checkpoint_is_a_checkpoint_error(tmp_path, where, raised):
    """safetensors and torch.save do not raise OSError on EFBIG/ENOSPC: any failure is caught,
    the partial folder removed, and the previous checkpoint kept."""
    proc = _limited(CHECKPOINT, str(tmp_path), where)
    assert proc.returncode == 0, proc.stderr
    ckpt = tmp_path / "checkpoints" / "step-000002"
    assert f"CheckpointError: cannot write checkpoint {ckpt} ({raised}" in proc.stdout
    assert "the previous checkpoints are kept" in proc.stdout
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000001"]
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000001"]


CACHE = """
import warnings
import torch
from gpo.models.ref_cache import RefLogpCache
cache = RefLogpCache(Path(sys.argv[1]))
keys = [i.to_bytes(16, "little") for i in range(2000)]
cache.put(keys, torch.zeros(4000), torch.ones(4000, dtype=torch.int64))
limit(4096)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cache.flush()
    cache.put([b"x" * 16], torch.zeros(2), torch.ones(2, dtype=torch.int64))
    cache.flush()
print(len(caught))
print(caught[0].message if caught else "")
print(cache.get(keys[:1]) is not None)
"""


def test_a_full_disk_under_the_reference_cache_warns_once_and_goes_on(tmp_path):
    proc = _limited(CACHE, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    count, message, usable = proc.stdout.splitlines()
    assert count == "1"
    assert message == (
        f"reference log-prob cache {tmp_path}: cannot write (File too large); going on without "
        "storing new values"
    )
    assert usable == "True"  # the values stay in memory for this run
    assert list(tmp_path.iterdir()) == []  # no .part-*.tmp.npz left


def test_a_cache_part_with_a_wrong_checksum_is_ignored(tmp_path):
    import numpy as np

    from gpo.models.ref_cache import RefLogpCache

    cache = RefLogpCache(tmp_path)
    cache.put([b"k" * 16], torch.tensor([-1.0, -2.0]), torch.tensor([3, 4]))
    cache.flush()
    (part,) = tmp_path.glob("part-*.npz")
    with np.load(part) as f:
        arrays = dict(f)
    arrays["sums"] = arrays["sums"] + 5.0  # a changed value, checksum left as it was
    np.savez(part, **arrays)
    reopened = RefLogpCache(tmp_path)
    assert len(reopened) == 0 and reopened.rejected == 1
    del arrays["checksum"]  # no checksum at all: not trusted either
    np.savez(part, **arrays)
    assert len(RefLogpCache(tmp_path)) == 0


def _args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", str(model), "--data", str(data), "--out", str(out),
        "--batch-size", "4", "--logging-steps", "1", "--eval-steps", "0", "--kl-prompts", "0",
        "--progress", "false", "--report-to", "none", "--save-final", "false", *extra,
    ]  # fmt: skip


def test_a_half_written_metrics_line_is_repaired_on_resume(
    tiny_model_dir, tiny_data_file, tmp_path, capsys
):
    run = tmp_path / "run"
    argv = _args(tiny_model_dir, tiny_data_file, run, "--save-steps", "2")
    assert main([*argv, "--max-steps", "3"]) == 0
    (run / "summary.json").unlink()  # as if killed (-9) while writing step 3's line
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.69')
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "4"]) == 0, (
        capsys.readouterr().err
    )
    lines = (run / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]  # every line whole JSON again
    assert steps == [1, 2, 3, 4]
    assert not (run / "metrics.jsonl.tmp").exists()


def test_final_is_written_atomically(tiny_config, tmp_path):
    """A failure while writing final/ leaves no half-written final/ (nor its temp folder)."""
    trainer = Trainer(tiny_config("run", max_steps=1, save_final=True))

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    trainer.tokenizer.save_pretrained = broken  # after the weights, before the tokenizer
    with pytest.raises(OSError, match="No space left"):
        trainer.run()
    assert not (tmp_path / "run" / "final").exists()
    assert not (tmp_path / "run" / ".tmp-final").exists()


def test_a_checkpoint_that_fails_to_load_changes_nothing(tiny_config, tmp_path, capsys):
    """Weights load but optimizer.pt is damaged: the model must not keep the checkpoint's
    weights while training restarts at step 0."""
    kw = dict(finetune="full", max_steps=4, save_steps=2, learning_rate=1e-2)
    Trainer(tiny_config("run", **kw)).run()
    (ckpt,) = checkpoint_dirs(tmp_path / "run")
    (ckpt / "optimizer.pt").write_bytes(b"damaged")
    fresh = Trainer(tiny_config("fresh", **kw))
    resumed = Trainer(tiny_config("run", resume=True, **kw))
    assert "is damaged" in capsys.readouterr().out
    assert resumed.start_step == 0 and resumed.scheduler.last_epoch == 0
    for a, b in zip(resumed.model.parameters(), fresh.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoints_keep_the_grad_scaler_and_cuda_rng(tmp_path, monkeypatch):
    """fp16's GradScaler state (scale, growth tracker) and, on CUDA, every device's RNG state
    are saved and restored (CUDA is simulated here: no GPU)."""
    from gpo.models.tiny import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer(seed=0)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.tensor(1.0))  # allocates the scale, as the first step does
    scaler.update(512.0)
    cuda_state = [torch.arange(16, dtype=torch.uint8)]
    restored: list[Any] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    ckpt = save_checkpoint(tmp_path, 1, model, opt, sched, {}, 2, tok, scaler)
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0)
    load_checkpoint(ckpt, model, opt, sched, fresh)
    assert fresh.state_dict() == scaler.state_dict() and fresh.get_scale() == 512.0
    assert len(restored) == 1 and torch.equal(restored[0][0], cuda_state[0])


@pytest.mark.slow
def test_stop_and_resume_with_lora_dropout_and_sampling_evals_gives_the_same_curve(
    tiny_config, tmp_path
):
    """RNG is used by LoRA dropout and by the KL evaluation's sampling: a broken RNG restore
    would change the resumed half of the curve."""
    kw = dict(
        max_steps=6, save_steps=2, eval_steps=2, lora_dropout=0.2, kl_prompts=2,
        kl_samples=2, max_new_tokens=4, eval_fraction=0.2,
    )  # fmt: skip
    Trainer(tiny_config("whole", **kw)).run()

    def stop_after_3(step: int, seconds: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config("cut", **kw), callbacks=[stop_after_3]).run()
    resumed = Trainer(tiny_config("cut", resume=True, **kw))
    assert resumed.start_step == 2
    resumed.run()
    whole, cut = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "cut")
    assert any("eval/kl" in r for r in whole)
    assert cut == whole  # bitwise: losses, eval metrics, KL samples
