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


# ------------------------------------------------ issue 27: only gpo's own files are deleted


def _user_files(folder):
    """The issue's reproduction: a user's own files under names that gpo also writes."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "samples").mkdir()
    (folder / "checkpoints" / "my.bin").write_text("y")
    (folder / "samples" / "my.txt").write_text("z")


def test_overwrite_refuses_a_folder_that_holds_no_gpo_run(
    tiny_model_dir, tiny_data_file, tmp_path, capsys
):
    proj = tmp_path / "proj"
    _user_files(proj)
    argv = train_argv(tiny_model_dir, tiny_data_file, proj, "--max-steps", "1")
    for extra in ([], ["--overwrite"]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"gpo: error: run folder {proj} has checkpoints, samples, which no gpo run recorded "
            "writing (no .gpo-run.jsonl): gpo neither writes into nor deletes them; choose "
            "another --out\n"
        )
        assert (proj / "checkpoints" / "my.bin").read_text() == "y"
        assert (proj / "samples" / "my.txt").read_text() == "z"
    assert sorted(p.name for p in proj.iterdir()) == ["checkpoints", "samples"]


def test_overwrite_deletes_exactly_what_the_run_wrote(
    tiny_model_dir, tiny_data_file, tmp_path, capsys
):
    run = tmp_path / "run"
    extra = ("--max-steps", "3", "--save-steps", "1", "--eval-steps", "2", "--save-final", "true")
    first = train_argv(tiny_model_dir, tiny_data_file, run, *extra, "--judge-prompts", "2")
    assert main([*first, "--report-to", "tensorboard"]) == 0
    wrote = {"checkpoints", "samples", "tensorboard", "final", "config.json", "summary.json"}
    assert wrote <= {p.name for p in run.iterdir()}
    (run / "checkpoints" / "my.bin").write_text("y")
    (run / "samples" / "my.txt").write_text("z")
    (run / "tensorboard" / "mine").mkdir()
    (run / "notes.txt").write_text("mine")
    capsys.readouterr()

    again = train_argv(tiny_model_dir, tiny_data_file, run, "--max-steps", "1", "--overwrite")
    assert main(again) == 0
    out = capsys.readouterr().out
    assert "gpo: --overwrite: deleted the previous run's config.json, metrics.jsonl, " in out
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert left == [
        ".gpo-run.jsonl",  # the new run's record
        "checkpoints",  # kept: it holds a file gpo did not write
        "checkpoints/my.bin",
        "config.json",  # the new run's
        "metrics.jsonl",
        "notes.txt",
        "samples",
        "samples/my.txt",
        "summary.json",
        "tensorboard",
        "tensorboard/mine",
        "training.png",
    ]


def test_a_run_from_before_the_record_is_resumable_but_never_overwritten(
    tiny_model_dir, tiny_data_file, tmp_path, capsys
):
    run = tmp_path / "run"
    argv = train_argv(tiny_model_dir, tiny_data_file, run, "--max-steps", "2", "--save-steps", "1")
    assert main(argv) == 0
    (run / ".gpo-run.jsonl").unlink()  # as written by gpo before it kept the record
    capsys.readouterr()
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds a run without a record of its files (config.json, metrics.jsonl" in err
    assert "continue it with --resume" in err and (run / "config.json").is_file()
    assert main([*argv, "--resume", "--max-steps", "3"]) == 0
    assert logged_steps(run) == [1, 2, 3]


def test_a_failed_start_leaves_nothing_and_the_corrected_rerun_just_works(
    tiny_model_dir, tiny_data_file, tmp_path, capsys
):
    """The issue's example: a KL target without held-out pairs. It used to leave config.json,
    so the rerun said "already holds a run", and with --resume "config differs"."""
    run = tmp_path / "run"
    argv = train_argv(tiny_model_dir, tiny_data_file, run, "--max-steps", "3", "--kl-target", "3")
    assert main([*argv, "--eval-fraction", "0"]) == 2
    assert "kl_target needs held-out prompts" in capsys.readouterr().err
    assert not run.exists()
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert main([*argv, "--eval-fraction", "0"]) == 2
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    assert main(argv) == 0


def test_a_failure_after_the_first_write_removes_what_the_run_wrote(
    tiny_model_dir, tiny_data_file, tmp_path, capsys, monkeypatch
):
    """A tracker that fails to start (after config.json and metrics.jsonl were recorded)."""
    import torch.utils.tensorboard

    def broken(*args, **kwargs):
        raise ValueError("tensorboard broke")

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", broken)
    run = tmp_path / "run"
    argv = train_argv(tiny_model_dir, tiny_data_file, run, "--max-steps", "1")
    assert main([*argv, "--report-to", "tensorboard"]) == 2
    assert "tensorboard broke" in capsys.readouterr().err
    assert not run.exists()
    assert main(argv) == 0


def test_full_fine_tuning_in_bf16_warns_about_bf16_master_weights(
    tiny_model_dir, tiny_data_file, tmp_path, capsys
):
    base = train_argv(tiny_model_dir, tiny_data_file, tmp_path / "a", "--max-steps", "1")
    assert main([*base, "--finetune", "full", "--dtype", "bfloat16"]) == 0
    err = capsys.readouterr().err
    assert (
        "gpo: warning: full fine-tuning with --dtype bfloat16 keeps bfloat16 weights: an update "
        "smaller than about 2^-9 of a weight rounds to nothing (at learning rate 1e-05 most "
        "AdamW updates are that small); for float32 weights with bfloat16 compute use --dtype "
        "float32 --mixed-precision bf16"
    ) in err
    for name, extra in (("b", ["--dtype", "bfloat16"]), ("c", ["--finetune", "full"])):
        argv = train_argv(tiny_model_dir, tiny_data_file, tmp_path / name, "--max-steps", "1")
        assert main([*argv, *extra]) == 0
        assert "warning: full fine-tuning" not in capsys.readouterr().err
