"""The shipped gold preference pairs (``data: gold``); the task itself is :mod:`gpo.gold`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from gpo.io import read_jsonl

ASSETS = Path(__file__).parent / "assets"
#: The shipped pre-generated preference pairs (train and test split in one file).
BUILTIN_GOLD_PATH = ASSETS / "gold_pairs.jsonl.gz"
#: Generation settings and summary statistics of the shipped file.
BUILTIN_GOLD_META_PATH = ASSETS / "gold_pairs.meta.json"


def load_builtin_gold(split: Literal["train", "test"] | None = "train") -> list[dict[str, Any]]:
    """The shipped pairs of one split (``None``: all rows)."""
    if not BUILTIN_GOLD_PATH.is_file():
        raise FileNotFoundError(
            f"{BUILTIN_GOLD_PATH} is missing; regenerate it with `gpo data build-gold --out FILE`"
        )
    rows = read_jsonl(BUILTIN_GOLD_PATH)
    return rows if split is None else [r for r in rows if r["split"] == split]
