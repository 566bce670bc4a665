"""Numeric guards (non-finite loss / gradients: stop or skip, agreed across ranks) and disk faults
(unwritable run folder, too little free space, ENOSPC while writing a checkpoint)."""

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_args import train_argv

from gpo.cli import main
from gpo.losses.family import PreferenceLoss
from gpo.train.checkpoint import checkpoint_dirs
from gpo.train.config import TrainConfig
from gpo.train.guards import NonFiniteGuard, any_rank
from gpo.train.setup import micro_batches
from gpo.train.trainer import Trainer, TrainingError

QUIET = dict(progress=False, report_to=["none"], eval_steps=0, kl_prompts=0, save_final=False)


def _cfg(model_dir: Path, data_file: Path, out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        model=str(model_dir),
        data=str(data_file),
        out=str(out),
        finetune="full",
        batch_size=4,
        learning_rate=3e-3,
        max_steps=6,
        logging_steps=1,
        save_steps=2,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        **QUIET,
    )
    base.update(kw)
    return TrainConfig(**base)


def _poison_loss_at(trainer: Trainer, step: int) -> None:
    """Make the objective's losses NaN on the ``step``-th call (one call per step here)."""
    inner, calls = trainer.objective, [0]

    def objective(*args: Any, **kwargs: Any) -> PreferenceLoss:
        out = inner(*args, **kwargs)
        calls[0] += 1
        return out._replace(losses=out.losses * float("nan")) if calls[0] == step else out

    trainer.objective = objective  # type: ignore[assignment]


def _rows_of_step(trainer: Trainer, step: int) -> list[int]:
    cfg = trainer.cfg
    gen = micro_batches(len(trainer.data.train), cfg.batch_size, cfg.seed, step - 1, cfg.shuffle)
    return [trainer.data.train[i].index for i in next(gen)[1]]


def _params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.params]


def test_nan_loss_stops_at_its_step_naming_rows_and_keeps_checkpoint(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path
) -> None:
    trainer = Trainer(_cfg(tiny_model_dir, tiny_data_file, tmp_path))
    _poison_loss_at(trainer, 3)
    with pytest.raises(TrainingError) as info:
        trainer.run()
    msg = str(info.value)
    rows = _rows_of_step(trainer, 3)
    assert f"non-finite loss at step 3 (micro-step 2, batch rows {rows})" in msg
    assert "last checkpoint is kept" in msg
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000002"]
    resumed = Trainer(_cfg(tiny_model_dir, tiny_data_file, tmp_path, resume=True))
    assert resumed.start_step == 2


def test_nan_gradient_with_finite_loss_stops(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path
) -> None:
    trainer = Trainer(_cfg(tiny_model_dir, tiny_data_file, tmp_path, max_grad_norm=0.0))
    calls = [0]

    def hook(grad: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return grad * float("inf") if calls[0] == 4 else grad

    trainer.params[0].register_hook(hook)
    with pytest.raises(TrainingError, match=r"non-finite gradients at step 4 \(batch rows \["):
        trainer.run()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000002"]


def test_nan_gradient_message_names_rows(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path
) -> None:
    trainer = Trainer(_cfg(tiny_model_dir, tiny_data_file, tmp_path, save_steps=0))
    trainer.params[0].register_hook(lambda g: g * float("nan"))  # clipping on: norm is NaN
    with pytest.raises(TrainingError) as info:
        trainer.run()
    rows = sorted(_rows_of_step(trainer, 1))
    assert f"gradients at step 1 (batch rows {rows})" in str(info.value)


def test_skip_mode_drops_the_update_counts_it_and_goes_on(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _cfg(tiny_model_dir, tiny_data_file, tmp_path, on_nonfinite="skip", save_steps=0)
    snapshots: dict[int, list[torch.Tensor]] = {}
    trainer = Trainer(cfg, callbacks=[lambda step, _: snapshots.update({step: _params(trainer)})])
    _poison_loss_at(trainer, 3)
    trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(snapshots[2], snapshots[3], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[3], snapshots[4], strict=True))
    assert all(torch.isfinite(p).all() for p in snapshots[6])
    assert "gpo: skipped step 3: non-finite loss at step 3" in capsys.readouterr().out
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("nonfinite_skipped_steps", 0) for m in lines] == [0, 0, 1, 1, 1, 1]
    assert trainer.guard.skipped == 1


def test_loss_overflow_inside_the_objective_stops_at_the_step(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path
) -> None:
    """``square`` overflowing (unvalidated in training) is caught by the guard at its step."""
    trainer = Trainer(_cfg(tiny_model_dir, tiny_data_file, tmp_path, loss="square", beta=1.0))
    calls = [0]
    inner = trainer.objective

    def objective(pc: torch.Tensor, pr: torch.Tensor, *rest: Any, **kw: Any) -> PreferenceLoss:
        calls[0] += 1  # a huge log-prob gap on step 2: (1 - 1e20)^2 overflows float32
        return inner(pc + (1e20 if calls[0] == 2 else 0.0), pr, *rest, **kw)

    trainer.objective = objective  # type: ignore[assignment]
    with pytest.raises(TrainingError, match="non-finite loss at step 2"):
        trainer.run()


def test_config_rejects_non_finite_and_negative_numbers() -> None:
    for key, value in [("beta", float("inf")), ("learning_rate", float("nan"))]:
        with pytest.raises(ValueError, match=f"config: {key} = .* is out of range"):
            TrainConfig(**{key: value})
    with pytest.raises(ValueError, match="max_grad_norm"):
        TrainConfig(max_grad_norm=-1.0)
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        TrainConfig(on_nonfinite="ignore")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- DDP agreement


def _agree_worker(rank: int, port: int, results: Any) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    got: dict[str, Any] = {"any": any_rank(rank == 1), "none": any_rank(False)}
    guard = NonFiniteGuard("skip", "cpu", check_grads=False)
    loss = torch.tensor(float("nan") if rank == 1 else 0.5)  # only rank 1 sees the NaN
    guard.watch_loss(loss, micro=0, rows=torch.tensor([rank]))
    got["skip_ok"] = guard.step_ok(1, [], None)
    guard.watch_loss(torch.tensor(0.1), micro=1, rows=torch.tensor([rank]))
    got["next_ok"] = guard.step_ok(2, [], None)
    stop = NonFiniteGuard("stop", "cpu", check_grads=False)
    stop.watch_loss(loss, micro=0, rows=torch.tensor([rank]))
    try:
        stop.step_ok(1, [], None)
        got["stopped"] = ""
    except TrainingError as e:
        got["stopped"] = str(e)
    dist.destroy_process_group()
    results.put((rank, got))


def test_all_ranks_agree_to_skip_or_stop() -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_agree_worker, args=(r, port, results)) for r in (0, 1)]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for rank in (0, 1):
        assert got[rank]["any"] is True and got[rank]["none"] is False
        assert got[rank]["skip_ok"] is False and got[rank]["next_ok"] is True
        assert "at step 1" in got[rank]["stopped"]
    assert "batch rows [1]" in got[1]["stopped"]  # the rank that saw it names its rows
    assert "on another process" in got[0]["stopped"]


# --------------------------------------------------------------------------- disk faults


def _train_args(model_dir: Path, data_file: Path, out: Path, *extra: str) -> list[str]:
    full = ["--finetune", "full", "--max-steps", "6", "--save-steps", "2", "--logging-steps", "5"]
    return train_argv(model_dir, data_file, out, *full, *extra)


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpo: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_out_under_a_file_fails_before_loading_anything(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(_train_args(tiny_model_dir, tiny_data_file, blocker / "run")) == 2
    err = _one_line_error(capsys)
    assert f"run folder {blocker / 'run'}: cannot write there" in err and "--out" in err


@contextlib.contextmanager
def _read_only_folder(path: Path) -> Iterator[str]:
    """``path`` made unwritable, even for root (the tests run as root: mode bits do not stop
    it); yields the reason a write gets. Root: a read-only tmpfs mounted there, else the
    immutable attribute."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        try:
            yield "Permission denied"
        finally:
            path.chmod(0o700)
        return
    for on, off, reason in (
        (["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], ["umount", str(path)],
         "Read-only file system"),
        (["chattr", "+i", str(path)], ["chattr", "-i", str(path)], "Operation not permitted"),
    ):  # fmt: skip
        if shutil.which(on[0]) and subprocess.run(on, capture_output=True).returncode == 0:
            try:
                yield reason
            finally:
                subprocess.run(off, check=True)
            return
    pytest.skip("as root, neither a read-only mount nor chattr +i is allowed here")


def test_read_only_out_fails_before_loading_anything(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ro"
    with _read_only_folder(out) as reason:
        assert main(_train_args(tiny_model_dir, tiny_data_file, out)) == 2
    assert f"cannot write there ({reason})" in _one_line_error(capsys)


def test_huge_beta_gives_a_one_line_error_at_step_1(
    tiny_model_dir: Path, tiny_data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _train_args(tiny_model_dir, tiny_data_file, tmp_path, "--loss", "square")
    assert main([*args, "--beta", "1e30"]) == 2
    err = _one_line_error(capsys)
    assert "TrainingError: non-finite gradients at step 1 (batch rows [" in err


def test_too_little_free_space_fails_before_training(
    tiny_model_dir: Path,
    tiny_data_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(
        "gpo.train.run_folder.shutil.disk_usage", lambda p: real(p)._replace(free=10_000)
    )
    assert main(_train_args(tiny_model_dir, tiny_data_file, tmp_path)) == 2
    err = _one_line_error(capsys)
    assert "only 0 MiB free, but checkpoints and the final model need about" in err
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()


def test_enospc_during_checkpoint_write_keeps_previous_and_says_so(
    tiny_model_dir: Path,
    tiny_data_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_save = torch.save
    saves = [0]

    def full_disk(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        if Path(f).name == "optimizer.pt":
            saves[0] += 1
            if saves[0] == 2:  # the second checkpoint (step 4) hits a full disk
                Path(f).write_bytes(b"partial")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *a, **kw)

    monkeypatch.setattr("gpo.train.checkpoint.torch.save", full_disk)
    assert main(_train_args(tiny_model_dir, tiny_data_file, tmp_path)) == 2
    err = _one_line_error(capsys)
    assert "CheckpointError: cannot write checkpoint" in err and "step-000004" in err
    assert "No space left on device" in err and "previous checkpoints are kept" in err
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]
    monkeypatch.setattr("gpo.train.checkpoint.torch.save", real_save)
    assert main([*_train_args(tiny_model_dir, tiny_data_file, tmp_path), "--resume"]) == 0
    assert "resuming at step 2" in capsys.readouterr().out
