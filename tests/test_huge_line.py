"""A data file with one enormous line (issue 13, item 17): JSON lines are read in chunks, a line
longer than ``GPO_MAX_LINE_MB`` is refused naming the file and line without being held whole, and
a ``.json`` document bigger than ``GPO_MAX_JSON_MB`` is refused before it is read. The limits are
lowered through their environment variables so the files stay small."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import pytest
from cli_args import train_argv

from gpo.cli import main
from gpo.data.formats import DataError
from gpo.io import read_jsonl

ROW = {"prompt": "tell me", "chosen": " good cat", "rejected": " bad cat"}
LIMIT = 16384  # bytes: GPO_MAX_LINE_MB=0.015625


def _row_of_length(n: int) -> bytes:
    """A JSON row exactly ``n`` bytes long."""
    short = json.dumps({**ROW, "chosen": " good "}).encode()
    return json.dumps({**ROW, "chosen": " good " + "a" * (n - len(short))}).encode()


def _one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpo: error: "), err
    return err[0]


def test_a_line_over_the_limit_is_refused_naming_file_and_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("GPO_MAX_LINE_MB", str(LIMIT / (1 << 20)))
    data = tmp_path / "prefs.jsonl"
    data.write_bytes(json.dumps(ROW).encode() + b"\n" + _row_of_length(LIMIT + 1) + b"\n")
    err = _one_line(tmp_path, capsys, train_argv(tiny_model_dir, data, tmp_path / "run"))
    assert err == (
        f"gpo: error: {data}: line 2: longer than 16384 bytes, the most gpo reads of one line "
        "(a row this long is refused unread; set GPO_MAX_LINE_MB to raise the limit)"
    )
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_line_at_the_limit_is_read_one_byte_more_is_not(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GPO_MAX_LINE_MB", str(LIMIT / (1 << 20)))
    path = tmp_path / "p.jsonl"
    for end in (b"\n", b"\r\n", b"\r"):  # each kind of line end; the last line without one
        path.write_bytes(json.dumps(ROW).encode() + end + _row_of_length(LIMIT) + end + b"{}")
        rows = read_jsonl(path, DataError)
        assert len(rows) == 3 and len(rows[1]["chosen"]) > LIMIT - 100
        path.write_bytes(json.dumps(ROW).encode() + end + _row_of_length(LIMIT + 1) + end)
        with pytest.raises(DataError, match=r"p\.jsonl: line 2: longer than 16384 bytes"):
            read_jsonl(path, DataError)
    path.write_bytes((json.dumps(ROW).encode() + b"\r") * 400)  # short lines, 24 KiB in all
    assert len(read_jsonl(path, DataError)) == 400


def test_a_huge_line_is_not_held_in_memory(tmp_path: Path, monkeypatch) -> None:
    """A 24 MiB line (in a gzip file too) under a 1 MiB limit: refused after reading little more
    than the limit, not read whole (which a plain ``for line in file`` would do)."""
    monkeypatch.setenv("GPO_MAX_LINE_MB", "1")
    plain, packed = tmp_path / "big.jsonl", tmp_path / "big.jsonl.gz"
    with open(plain, "wb") as f, gzip.open(packed, "wb", compresslevel=1) as g:
        for out in (f, g):
            out.write(b'{"prompt": "')
            for _ in range(24):
                out.write(b"a" * (1 << 20))
            out.write(b'"}\n')
    for path in (plain, packed):
        tracemalloc.start()
        try:
            with pytest.raises(DataError, match=r"line 1: longer than 1 MiB"):
                read_jsonl(path, DataError)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 6 << 20, f"{path.name}: peak {peak >> 20} MiB"


def test_a_json_document_over_the_limit_is_refused_before_reading(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("GPO_MAX_JSON_MB", str(LIMIT / (1 << 20)))
    data = tmp_path / "prefs.json"
    data.write_text(json.dumps([ROW] * 400))  # one line, over 16 KiB
    size = data.stat().st_size
    err = _one_line(tmp_path, capsys, train_argv(tiny_model_dir, data, tmp_path / "run"))
    assert err == (
        f"gpo: error: {data}: {size} bytes, more than the 16384 bytes gpo reads as one JSON "
        "document; write the rows as JSON lines (.jsonl, read a line at a time) or set "
        "GPO_MAX_JSON_MB to raise the limit"
    )


@pytest.mark.parametrize("value", ["0", "-1", "lots", "inf", "nan"])
def test_a_bad_limit_in_the_environment_is_named(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch, value
) -> None:
    monkeypatch.setenv("GPO_MAX_LINE_MB", value)
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    err = _one_line(tmp_path, capsys, train_argv(tiny_model_dir, data, tmp_path / "run"))
    assert err == f"gpo: error: GPO_MAX_LINE_MB must be a positive number of MiB, got {value!r}"


def test_the_default_limits(monkeypatch) -> None:
    from gpo.data.sources import MAX_JSON_ENV, MAX_JSON_MIB
    from gpo.io import MAX_LINE_ENV, MAX_LINE_MIB, env_limit

    monkeypatch.delenv(MAX_LINE_ENV, raising=False)
    monkeypatch.delenv(MAX_JSON_ENV, raising=False)
    assert env_limit(MAX_LINE_ENV, MAX_LINE_MIB) == 64 << 20
    assert env_limit(MAX_JSON_ENV, MAX_JSON_MIB) == 1024 << 20


def test_lines_split_alike_at_every_chunk_border(monkeypatch) -> None:
    """Read in chunks of 1 to 4 bytes, a CRLF cut by a chunk border is still one line end: the
    lines are those of ``bytes.splitlines`` (LF, CRLF, lone CR), whatever the chunk size."""
    import io
    import random

    import gpo.io

    rng = random.Random(0)
    for _ in range(300):
        data = bytes(rng.choice(b"ab\r\n") for _ in range(rng.randint(0, 12)))
        for chunk in (1, 2, 3, 4):
            monkeypatch.setattr(gpo.io, "_CHUNK", chunk)
            got = list(gpo.io._lines(io.BytesIO(data), 100))
            assert got == data.splitlines(), (data, chunk)
