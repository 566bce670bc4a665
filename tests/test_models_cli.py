"""``gpo models tiny OUT``: a tiny random model folder that ``gpo train --model OUT`` accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpo.cli import main


def test_tiny_model_folder_trains(
    tmp_path: Path, tiny_data_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny"
    assert main(["models", "tiny", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"to {out}\n" in printed and f"try: gpo train --model {out} --max-steps 5" in printed
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    argv = ["train", "--model", str(out), "--data", str(tiny_data_file)]
    argv += ["--out", str(tmp_path / "run")]
    quiet = ["--max-steps", "2", "--batch-size", "4", "--kl-prompts", "0", "--save-steps", "0"]
    quiet += ["--save-final", "false", "--progress", "false", "--report-to", "none"]
    assert main(argv + quiet) == 0, capsys.readouterr().err


def test_tiny_refuses_a_folder_in_use_and_bad_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert main(["models", "tiny", str(used)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"gpo: error: {used}: already exists and is not an empty folder; choose a new OUT\n"
    )
    assert main(["models", "tiny", str(tmp_path / "odd"), "--hidden", "12"]) == 2
    assert "--hidden a multiple of 8, got 2 and 12" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["models", "tiny", str(empty), "--layers", "1", "--hidden", "16"]) == 0
