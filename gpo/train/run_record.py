"""What a training run wrote into its folder, so that ``--overwrite`` deletes exactly that.

``RUN/.gpo-run.jsonl`` gets one line per output, appended *before* the output is written (a run
killed mid-write has still recorded it): ``{"path": "checkpoints/step-000004", "kind": "tree"}``.
Kinds: ``file`` (one file), ``tree`` (a folder gpo writes whole, deleted whole) and ``dir`` (a
folder gpo created to hold outputs: removed only once empty). A folder without the record holds
no gpo run, whatever its file names, and ``--overwrite`` deletes nothing there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Literal

RECORD = ".gpo-run.jsonl"
Kind = Literal["file", "tree", "dir"]


def _relative(run_dir: Path, path: str | os.PathLike[str]) -> str:
    rel = os.path.relpath(Path(run_dir) / path, run_dir)
    if rel.startswith(os.pardir) or os.path.isabs(rel):
        raise ValueError(f"{path} is outside run folder {run_dir}")
    return Path(rel).as_posix()


def record(run_dir: Path, path: str | os.PathLike[str], kind: Kind = "file") -> None:
    """Note that this run writes ``path`` (relative to ``run_dir``, or inside it)."""
    line = json.dumps({"path": _relative(run_dir, path), "kind": kind})
    with open(Path(run_dir) / RECORD, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def make_dir(run_dir: Path, path: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` inside the run folder, recording each folder this run creates."""
    target = Path(run_dir) / path
    missing = [p for p in [target, *target.parents] if not p.exists() and run_dir in p.parents]
    for p in reversed(missing):
        record(run_dir, p.relative_to(run_dir), "dir")
    target.mkdir(parents=True, exist_ok=True)
    return target


def output(run_dir: Path, path: str | os.PathLike[str], kind: Kind = "file") -> Path:
    """Record ``path`` (and the folders made for it) and return it, ready to be written."""
    target = Path(run_dir) / path
    if target.parent != Path(run_dir):
        make_dir(run_dir, target.parent.relative_to(run_dir))
    record(run_dir, target.relative_to(run_dir), kind)
    return target


def recorded(run_dir: Path) -> dict[str, Kind] | None:
    """Path -> kind of everything the run folder's record names (None: no record, no gpo run).
    A damaged line (a kill mid-append) is skipped."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return None
    entries: dict[str, Kind] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            item = json.loads(line)
            entries[str(item["path"])] = item["kind"]
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def recorded_outputs(run_dir: Path) -> list[str]:
    """The top-level names of recorded outputs that exist, in the order first recorded."""
    names: dict[str, None] = {}
    for rel in recorded(run_dir) or {}:
        top = rel.split("/")[0]
        if (Path(run_dir) / top).exists() or (Path(run_dir) / top).is_symlink():
            names.setdefault(top)
    return list(names)


def delete_recorded(run_dir: Path) -> list[str]:
    """Delete every recorded output that exists, then the recorded folders left empty, then the
    record; anything else in the folder stays. Returns the top-level names it deleted from."""
    entries = recorded(run_dir)
    if entries is None:
        return []
    shown = recorded_outputs(run_dir)
    for rel, kind in entries.items():
        path = Path(run_dir) / rel
        if kind == "dir" or not (path.exists() or path.is_symlink()):
            continue
        if kind == "tree" and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif not path.is_dir() or path.is_symlink():
            path.unlink()
    dirs = sorted((rel for rel, kind in entries.items() if kind == "dir"), key=len, reverse=True)
    for rel in dirs:  # deepest first; a folder that still holds other files stays
        path = Path(run_dir) / rel
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()
    (Path(run_dir) / RECORD).unlink()
    return shown
