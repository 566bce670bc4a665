"""Shared by the CLI-level training tests: a quiet `gpo train` argv and the logged steps."""

from __future__ import annotations

import json
from pathlib import Path


def train_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """A quiet LoRA run on ``model``/``data`` into ``out``: no evaluation, no final model, no
    trackers, a log line per step; ``extra`` flags come last and win."""
    return [
        "train",
        "--model", str(model),
        "--data", str(data),
        "--out", str(out),
        "--batch-size", "4",
        "--logging-steps", "1",
        "--eval-steps", "0",
        "--kl-prompts", "0",
        "--progress", "false",
        "--report-to", "none",
        "--save-final", "false",
        *extra,
    ]  # fmt: skip


def logged_steps(run: Path) -> list[int]:
    """The steps of the train records in ``run/metrics.jsonl``."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r]
