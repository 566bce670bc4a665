"""The shipped preference pairs of the built-in tasks (``data: gold``, ``gold-v2``, ``sentiment``);
the tasks themselves are :mod:`gpo.gold` and :mod:`gpo.gold.sentiment`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gpo.io import read_jsonl

ASSETS = Path(__file__).parent / "assets"
#: The shipped pre-generated preference pairs (train and test split in one file).
BUILTIN_GOLD_PATH = ASSETS / "gold_pairs.jsonl.gz"
#: Generation settings and summary statistics of the shipped file.
BUILTIN_GOLD_META_PATH = ASSETS / "gold_pairs.meta.json"


@dataclass(frozen=True)
class BuiltinTask:
    """A built-in gold task's shipped pairs, the judge whose score is its gold preference (a
    spec of ``gpo.eval.judges.JUDGES``, e.g. ``gold:version=2``) and the command that rebuilds
    the pairs."""

    name: str
    path: Path
    meta_path: Path
    judge: str
    build: str


GOLD = BuiltinTask(
    "gold", BUILTIN_GOLD_PATH, BUILTIN_GOLD_META_PATH, "gold", "gpo data build-gold --out FILE"
)
#: The gold task's pairs labelled again with version 2 of its reward (a topic-repetition term).
GOLD_V2 = BuiltinTask(
    "gold-v2",
    ASSETS / "gold_pairs_v2.jsonl.gz",
    ASSETS / "gold_pairs_v2.meta.json",
    "gold:version=2",
    "gpo data build --task gold-v2 --relabel gold_pairs.jsonl.gz --out FILE",
)
SENTIMENT = BuiltinTask(
    "sentiment",
    ASSETS / "sentiment_pairs.jsonl.gz",
    ASSETS / "sentiment_pairs.meta.json",
    "vader",
    "gpo data build --task sentiment --out FILE",
)
#: ``--data`` names of the built-in tasks (``builtin`` is the gold task's older name).
BUILTIN_TASKS: dict[str, BuiltinTask] = {
    "gold": GOLD,
    "builtin": GOLD,
    "gold-v2": GOLD_V2,
    "sentiment": SENTIMENT,
}


def builtin_task(name: str | None) -> BuiltinTask | None:
    """The built-in task a ``--data`` value names, or None for any other source."""
    return BUILTIN_TASKS.get(name) if name is not None else None


def load_builtin(
    name: str, split: Literal["train", "test"] | str | None = "train"
) -> list[dict[str, Any]]:
    """The shipped pairs of a built-in task, of one split (``None``: all rows)."""
    task = BUILTIN_TASKS[name]
    if not task.path.is_file():
        raise FileNotFoundError(f"{task.path} is missing; regenerate it with `{task.build}`")
    rows = read_jsonl(task.path)
    return rows if split is None else [r for r in rows if r["split"] == split]


def load_builtin_gold(split: Literal["train", "test"] | None = "train") -> list[dict[str, Any]]:
    """The shipped gold-task pairs of one split (``None``: all rows)."""
    return load_builtin("gold", split)
