"""Where preference rows come from: local files, a saved ``datasets`` dataset, or a hub name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpo.data.builtin import BUILTIN_TASKS, load_builtin
from gpo.data.formats import DataError, NoSplits, NoSuchSplit
from gpo.data.hub import HubUnreachable, check_hub_reachable, hub_offline
from gpo.io import env_limit, read_jsonl, size_text

BUILTIN_NAMES = tuple(BUILTIN_TASKS)  # "gold", "builtin", "sentiment"
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
#: The largest .json file read as one JSON document, in MiB: it is parsed whole (several times
#: its size in memory), so a bigger one is refused before reading. JSON lines are read a line at
#: a time (each line at most ``GPO_MAX_LINE_MB``, see :func:`gpo.io.read_jsonl`).
MAX_JSON_ENV, MAX_JSON_MIB = "GPO_MAX_JSON_MB", 1024


def _check_json_size(path: Path) -> None:
    limit, size = env_limit(MAX_JSON_ENV, MAX_JSON_MIB), path.stat().st_size
    if size > limit:
        raise DataError(
            f"{path}: {size_text(size)}, more than the {size_text(limit)} gpo reads as one JSON "
            f"document; write the rows as JSON lines (.jsonl, read a line at a time) or set "
            f"{MAX_JSON_ENV} to raise the limit"
        )


def _read_json(path: Path, split: str | None) -> list[Any]:
    _check_json_size(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        data, error = None, e  # maybe JSON lines in a .json file, as `datasets` accepts
    if not isinstance(data, dict) and split not in (None, "train"):
        raise NoSplits(f"{path}: a list of rows has no split {split!r}")
    if data is None:
        if text.strip() and not _first_line_is_json(text):  # one JSON document: say where
            raise DataError(f"{path}: line {error.lineno}: malformed JSON ({error.msg})")
        return read_jsonl(path, DataError)
    if isinstance(data, dict) and isinstance(data.get("chosen"), (list, dict)):
        return _columns_to_rows(path, data)  # pandas' to_json(orient="columns"/"list")
    if isinstance(data, dict) and "chosen" not in data:
        key = split or "train"
        if key not in data:
            raise NoSuchSplit(f"{path}: no split {key!r} (top-level keys: {', '.join(data)})")
        data = data[key]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of rows, got {type(data).__name__}")
    return data


def _first_line_is_json(text: str) -> bool:
    try:
        json.loads(text.lstrip().split("\n", 1)[0])
    except json.JSONDecodeError:
        return False
    return True


def _columns_to_rows(path: Path, data: dict[str, Any]) -> list[Any]:
    """Column-oriented JSON (a dict of equal-length lists, or of {index: value} dicts)."""
    columns = {k: list(v.values()) if isinstance(v, dict) else v for k, v in data.items()}
    sizes = {k: len(v) for k, v in columns.items() if isinstance(v, list)}
    if len(sizes) != len(columns) or len(set(sizes.values())) != 1:
        detail = ", ".join(f"{k}: {n}" for k, n in sizes.items())
        raise DataError(
            f"{path}: column-oriented JSON needs one list per field, all of one length "
            f"(got {detail or 'none'})"
        )
    n = next(iter(sizes.values()))
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def _read_csv(path: Path) -> list[Any]:
    """Every cell as text (``None``, ``NA``, ``nan`` or ``42`` are answers, not missing values
    or numbers); a row with more or fewer cells than the header is an error naming it."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return []
            rows = []
            for number, cells in enumerate(reader, 1):
                if len(cells) != len(header):
                    raise DataError(
                        f"{path}: row {number}: {len(cells)} cells, but the header has "
                        f"{len(header)} ({', '.join(header)})"
                    )
                rows.append(dict(zip(header, cells, strict=True)))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason})") from None
    except csv.Error as e:
        raise DataError(f"{path}: cannot read as csv ({e})") from None
    return rows


def _read_with_datasets(path: Path, builder: str) -> list[Any]:
    import datasets
    from datasets.utils import logging as ds_logging

    # Quiet: a progress bar, or a logged error before our own, would break one-line errors.
    verbosity, bars = ds_logging.get_verbosity(), datasets.is_progress_bar_enabled()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:
        raise DataError(f"{path}: cannot read as {builder}: {e}") from None
    finally:
        ds_logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
    return ds.to_list()


def _read_saved(path: Path, split: str | None) -> list[Any]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        key = split or "train"
        if key not in ds:
            raise NoSuchSplit(f"{path}: no split {key!r} (splits: {', '.join(ds)})")
        ds = ds[key]
    elif split not in (None, "train"):  # like a single file: a lone Dataset has only 'train'
        raise NoSplits(f"{path}: a saved Dataset (not a DatasetDict) has no split {split!r}")
    return ds.to_list()


def _read_hub(name: str, split: str | None) -> list[Any]:
    import datasets

    if not hub_offline("HF_DATASETS_OFFLINE"):  # fail in seconds, not after ~50 s of retries
        try:
            check_hub_reachable(f"dataset {name!r}")
        except HubUnreachable as e:
            raise DataError(str(e)) from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except ValueError as e:
        if "split" in str(e).lower():
            raise NoSuchSplit(f"dataset {name!r}: {e}") from None
        raise DataError(f"cannot load dataset {name!r}: {e}") from None
    except Exception as e:
        hint = (
            " The Hub is switched off here (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1): use a "
            "local file (.jsonl/.json/.parquet/.csv) or a dataset saved with save_to_disk."
            if hub_offline("HF_DATASETS_OFFLINE")
            else " Check the name and your network, or pass a local file."
        )
        raise DataError(f"cannot load dataset {name!r}: {type(e).__name__}: {e}.{hint}") from None
    return ds.to_list()


def looks_like_path(source: str) -> bool:
    """Hub names look like ``name`` or ``org/name``; anything else is taken for a local path."""
    return (
        source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or source.endswith(FILE_SUFFIXES)
    )


def load_rows(source: str, split: str | None = None) -> list[Any]:
    """Raw rows from ``source``: a built-in task, a file, a saved dataset or a hub name."""
    if source in BUILTIN_NAMES:
        return load_builtin(source, split or "train")
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _read_saved(path, split)
        raise DataError(f"{path}: a folder, but not a dataset saved with save_to_disk")
    if path.is_file():
        suffix = path.suffix.lower()
        if split not in (None, "train") and suffix != ".json":
            raise NoSplits(f"{path}: a single file has no split {split!r}")
        if suffix == ".jsonl":
            return read_jsonl(path, DataError)
        if suffix == ".json":
            return _read_json(path, split)
        if suffix == ".csv":
            return _read_csv(path)
        if suffix == ".parquet":
            return _read_with_datasets(path, "parquet")
        raise DataError(f"{path}: unsupported file type (use {', '.join(FILE_SUFFIXES)})")
    if looks_like_path(source):
        raise DataError(f"{source}: no such file or folder")
    return _read_hub(source, split)
