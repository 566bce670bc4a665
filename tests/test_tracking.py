"""Trackers across a resume (issue 27, item 9): TensorBoard purges the steps an earlier process
logged after the checkpoint; W&B takes the run name, project and entity from the config or the
environment and goes on in the same W&B run."""

from __future__ import annotations

import sys
import types
from typing import Any

from cli_args import train_argv

from gpo.cli import main


def test_tensorboard_has_each_step_once_after_a_resume(tiny_model_dir, tiny_data_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    argv = train_argv(tiny_model_dir, tiny_data_file, run, "--save-steps", "2")
    argv += ["--report-to", "tensorboard"]
    assert main([*argv, "--max-steps", "3"]) == 0  # logs 1, 2, 3; checkpoint at 2
    assert main([*argv, "--max-steps", "5", "--resume"]) == 0  # continues from step 2
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == [1, 2, 3, 4, 5]


class FakeWandb(types.ModuleType):
    """Records ``wandb.init`` calls; what W&B would do with them is W&B's business."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits: list[dict[str, Any]] = []
        self.logged: list[int] = []

    def init(self, **kwargs: Any) -> Any:
        self.inits.append(kwargs)
        run = types.SimpleNamespace()
        run.log = lambda metrics, step: self.logged.append(step)
        run.finish = lambda: None
        return run


def test_wandb_names_and_resumes_the_same_run(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_ENTITY", "env-team")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    run = tmp_path / "my-run"
    argv = train_argv(tiny_model_dir, tiny_data_file, run, "--save-steps", "2")
    argv += ["--report-to", "wandb", "--wandb-project", "prefs", "--run-name", "dpo-b0.1"]
    assert main([*argv, "--max-steps", "3"]) == 0
    assert main([*argv, "--max-steps", "4", "--resume"]) == 0
    first, second = fake.inits
    assert first["project"] == second["project"] == "prefs"
    assert first["entity"] == second["entity"] == "env-team"
    assert first["name"] == second["name"] == "dpo-b0.1"
    assert first["id"] == second["id"] and len(first["id"]) == 12
    assert second["resume"] == "allow"
    assert fake.logged == [1, 2, 3, 3, 4]  # W&B ignores (and warns about) the second step 3

    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    other = train_argv(tiny_model_dir, tiny_data_file, tmp_path / "other", "--max-steps", "1")
    assert main([*other, "--report-to", "wandb"]) == 0
    third = fake.inits[-1]
    assert third["project"] == "from-env" and third["name"] == "other"
    assert third["id"] != first["id"]
