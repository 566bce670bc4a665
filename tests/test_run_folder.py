"""A run folder holds one run (issue 13, items 1 and 10): reusing ``--out`` without ``--resume``
is refused unless ``--overwrite`` deletes the old run; ``max_steps`` changed on resume warns."""

from __future__ import annotations

import json

from cli_args import logged_steps, train_argv

from gpo.cli import main
from gpo.train.checkpoint import checkpoint_dirs


def test_reusing_out_without_resume_is_refused_and_overwrite_really_clears(
    tiny_model_dir, tiny_data_file, tmp_path, capsys
):
    run = tmp_path / "run"
    first = train_argv(tiny_model_dir, tiny_data_file, run, "--max-steps", "4", "--save-steps", "1")
    assert main([*first, "--beta", "0.3"]) == 0
    assert [p.name for p in checkpoint_dirs(run)] == ["step-000002", "step-000003"]
    config = (run / "config.json").read_bytes()
    capsys.readouterr()

    again = train_argv(tiny_model_dir, tiny_data_file, run, "--max-steps", "2", "--save-steps", "1")
    assert main(again) == 2
    err = capsys.readouterr().err
    assert err == (
        f"gpo: error: run folder {run} already holds a run (config.json, metrics.jsonl, "
        "summary.json, checkpoints, training.png): continue it with --resume, "
        "pass --overwrite to delete it and start again, or choose another --out\n"
    )
    assert (run / "config.json").read_bytes() == config  # nothing of the old run was touched
    assert logged_steps(run) == [1, 2, 3, 4]
    assert [p.name for p in checkpoint_dirs(run)] == ["step-000002", "step-000003"]

    assert main([*again, "--resume", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err == "gpo: error: config: resume and overwrite contradict each other: pass one\n"

    (run / "notes.txt").write_text("mine")  # not a run output: kept
    assert main([*again, "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "gpo: --overwrite: deleted the previous run's config.json, metrics.jsonl" in out
    assert [p.name for p in checkpoint_dirs(run)] == ["step-000001"]  # no old step-2/3 left
    assert logged_steps(run) == [1, 2]
    assert json.loads((run / "config.json").read_text())["beta"] == 0.1
    assert (run / "notes.txt").read_text() == "mine"


def test_a_folder_with_other_files_only_is_used(tiny_model_dir, tiny_data_file, tmp_path):
    """E.g. a sweep's train.log, written before its run starts."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("started\n")
    assert main(train_argv(tiny_model_dir, tiny_data_file, run, "--max-steps", "1")) == 0
    assert logged_steps(run) == [1]


def test_max_steps_changed_on_resume_warns_about_the_schedule(
    tiny_model_dir, tiny_data_file, tmp_path, capsys
):
    run = tmp_path / "run"
    argv = train_argv(tiny_model_dir, tiny_data_file, run, "--max-steps", "4", "--save-steps", "2")
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "6"]) == 0
    out = capsys.readouterr().out
    assert (
        "gpo: max_steps changed from 4 to 6 on resume: the linear learning-rate schedule (and "
        "its warm-up) now spans 6 steps, continued from the checkpoint's step"
    ) in out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    at_4 = [r["learning_rate"] for r in records if r["step"] == 4 and "loss" in r]
    assert at_4[0] > 0  # the new, longer schedule: not decayed to 0 at step 4
