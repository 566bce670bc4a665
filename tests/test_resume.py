"""A resume that cannot reproduce the run refuses, naming why (issue 27, item 5): another number
of processes, other data behind the same path; a checkpoint whose weights do not load leaves the
optimizer and scheduler untouched, and only damage (not an out-of-memory error) is skipped."""

from __future__ import annotations

import json

import pytest
import torch
from cli_args import logged_steps, train_argv
from conftest import write_tiny_preferences
from safetensors.torch import load_file, save_file

from gpo.cli import main
from gpo.train.checkpoint import STATE, checkpoint_dirs
from gpo.train.trainer import Trainer


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpo: error: ") and "\n" not in err, err
    return err


def test_another_number_of_processes_is_refused(tiny_model_dir, tiny_data_file, tmp_path, capsys):
    run = tmp_path / "run"
    argv = train_argv(tiny_model_dir, tiny_data_file, run, "--max-steps", "3", "--save-steps", "2")
    assert main(argv) == 0
    (ckpt,) = checkpoint_dirs(run)
    state = json.loads((ckpt / STATE).read_text())
    assert state["num_processes"] == 1
    (run / "summary.json").unlink()  # as if stopped after step 2
    (ckpt / STATE).write_text(json.dumps({**state, "num_processes": 2}))
    assert main([*argv, "--resume"]) == 2
    assert (
        f"refusing to resume {run}: its checkpoints were written by 2 process(es), this run has "
        "1: the global batch (batch_size x processes) and the position in the data order would "
        "change; resume with 2 process(es)"
    ) in _one_line_error(capsys)
    (ckpt / STATE).write_text(json.dumps(state))
    assert main([*argv, "--resume"]) == 0
    assert logged_steps(run) == [1, 2, 3]


def test_other_data_behind_the_same_path_is_refused(tiny_model_dir, tmp_path, capsys):
    data, run = tmp_path / "prefs.jsonl", tmp_path / "run"
    write_tiny_preferences(data, seed=0)
    argv = train_argv(tiny_model_dir, data, run, "--max-steps", "3", "--save-steps", "2")
    assert main(argv) == 0
    assert len(json.loads((run / "config.json").read_text())["data_fingerprint"]) == 32
    (run / "summary.json").unlink()
    write_tiny_preferences(data, seed=1)  # same file name, other pairs
    assert main([*argv, "--resume"]) == 2
    err = _one_line_error(capsys)
    assert f"refusing to resume {run}: the tokenized data differ from the run's" in err
    write_tiny_preferences(data, seed=0)
    assert main([*argv, "--resume"]) == 0


def test_weights_that_do_not_load_leave_optimizer_and_scheduler_untouched(
    tiny_config, tmp_path, capsys
):
    """A LoRA adapter whose tensors have other shapes: the run starts at step 0 with a fresh
    optimizer and schedule (they used to be restored before the weights failed)."""
    kw = dict(max_steps=4, save_steps=2, learning_rate=1e-2)
    Trainer(tiny_config("run", **kw)).run()
    (ckpt,) = checkpoint_dirs(tmp_path / "run")
    adapter = ckpt / "adapter_model.safetensors"
    weights = load_file(adapter)
    first = sorted(weights)[0]
    weights[first] = weights[first][:-1].clone()
    save_file(weights, adapter)
    fresh = Trainer(tiny_config("fresh", **kw))
    resumed = Trainer(tiny_config("run", resume=True, **kw))
    assert "is damaged" in capsys.readouterr().out
    assert resumed.start_step == 0 and resumed.scheduler.last_epoch == 0
    assert resumed.optimizer.state_dict()["state"] == {}  # no AdamW moments of step 2
    for a, b in zip(resumed.model.parameters(), fresh.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_out_of_memory_while_loading_is_not_taken_for_damage(tiny_config, monkeypatch):
    import gpo.train.checkpoint as checkpoint

    Trainer(tiny_config("run", max_steps=3, save_steps=2)).run()

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(checkpoint, "_read_weights", oom)
    with pytest.raises(torch.OutOfMemoryError):
        Trainer(tiny_config("run", resume=True, max_steps=4, save_steps=2))
