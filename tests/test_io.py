"""``gpo.io`` writes: JSON and JSON lines reach the disk (fsync) before the rename, and a failed
write leaves neither a ``.tmp`` file nor a changed target behind."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpo.io import read_jsonl, write_json, write_jsonl


def _events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record each ``os.fsync`` (with the file it synced) and ``os.replace``, in order."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def spy_replace(src: Any, dst: Any) -> None:
        events.append(("replace", str(src)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    return events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("name", ["rows.jsonl", "rows.jsonl.gz"])
def test_write_jsonl_fsyncs_the_temp_file_before_the_rename(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _events(monkeypatch)
    path = write_jsonl([{"a": 1}, {"b": "é"}], tmp_path / name)
    tmp = str(tmp_path / (name + ".tmp"))
    assert events == [("fsync", tmp), ("replace", tmp)]
    assert read_jsonl(path) == [{"a": 1}, {"b": "é"}]
    if name.endswith(".gz"):  # a whole gzip stream (trailer written before the fsync)
        assert gzip.decompress(path.read_bytes()) == b'{"a": 1}\n{"b": "\xc3\xa9"}\n'


def _rows_then_fail() -> Iterator[dict[str, Any]]:
    yield {"ok": 1}
    raise RuntimeError("the row source broke")


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.jsonl.gz"])
def test_a_failed_write_jsonl_leaves_no_temp_file_and_the_old_file(
    name: str, tmp_path: Path
) -> None:
    path = write_jsonl([{"old": True}], tmp_path / name)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="the row source broke"):
        write_jsonl(_rows_then_fail(), path)
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_jsonl([{"ok": 1}, {"bad": object()}], path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no rows.jsonl.tmp
    assert path.read_bytes() == before


def test_a_failed_write_json_leaves_no_temp_file_and_the_old_file(tmp_path: Path) -> None:
    path = write_json(tmp_path / "summary.json", {"step": 1})
    before = path.read_text()
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json(path, {"step": 2, "model": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    assert path.read_text() == before
