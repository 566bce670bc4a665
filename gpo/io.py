"""What gpo reads and writes, shared by every package: JSON and JSON lines, YAML mappings, run
folders and their printed config, headless figures."""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType
from typing import IO, Any

#: URL query parameters whose values are treated as secrets (e.g. ``?api_key=...``).
_SECRET_PARAM = re.compile(r"(?i)(key|token|secret|pass|auth|sig|credential)")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s,'\"]+")
REDACTED = "***"


def _redact_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    if "@" in authority:  # user:password@host
        authority = REDACTED + "@" + authority.rpartition("@")[2]
    path, q, query = tail.partition("?")
    if q:
        parts = []
        for item in query.split("&"):
            name, eq, value = item.partition("=")
            hide = eq and value and _SECRET_PARAM.search(name)
            parts.append(f"{name}={REDACTED}" if hide else item)
        query = "&".join(parts)
    return f"{scheme}://{authority}{slash}{path}{q}{query}"


def redact_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it masked: ``user:password@`` and the
    values of secret-looking query parameters become ``***``; everything else is kept."""
    return _URL.sub(lambda m: _redact_url(m.group(0)), text)


def new_run_dir(out: str | os.PathLike[str] | None, kind: str) -> Path:
    """``out`` if given, else ``runs/<kind>-<timestamp>``; created if missing."""
    path = (
        Path(out) if out is not None else Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # "inf"/"nan": keep the file strict JSON
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    return obj


def redacted(obj: Any) -> Any:
    """``obj`` as JSON-ready values with :func:`redact_urls` applied to every string."""
    obj = _jsonable(obj)
    if isinstance(obj, str):
        return redact_urls(obj)
    if isinstance(obj, dict):
        return {k: redacted(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redacted(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as strict, indented JSON atomically (temp file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(_jsonable(obj), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written temp file is litter, never a result
        raise
    return path


def print_config(config: Any, title: str = "resolved config") -> None:
    """Print a (dataclass) config as indented JSON under a title."""
    print(f"{title}:\n{json.dumps(_jsonable(config), indent=2)}", flush=True)


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write rows as JSON lines (gzip if the name ends in .gz) atomically (temp file, fsync,
    rename); on any error the temp file is removed and an existing ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as raw:
            # mtime=0: the same rows give the same bytes. Closing the gzip writer leaves raw open.
            gz = path.suffix == ".gz"
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if gz else nullcontext(raw) as f:
                for row in rows:
                    f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
            raw.flush()
            os.fsync(raw.fileno())  # the rename must not land before the bytes (power loss)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written temp file is litter, never a result
        raise
    return path


#: The longest line :func:`read_jsonl` reads, in MiB (a JSON lines record this long is not
#: preference data): a longer one is refused after reading that much of it, never held whole.
MAX_LINE_ENV, MAX_LINE_MIB = "GPO_MAX_LINE_MB", 64
_CHUNK = 1 << 20


def env_limit(name: str, default_mib: float) -> int:
    """A size limit in bytes from the environment variable ``name`` (MiB, may be fractional),
    else ``default_mib``."""
    raw = os.environ.get(name, "").strip()
    try:
        mib = float(raw) if raw else default_mib
    except ValueError:
        mib = math.nan
    if not mib > 0 or math.isinf(mib):
        raise ValueError(f"{name} must be a positive number of MiB, got {raw!r}")
    return max(1, int(mib * (1 << 20)))


def size_text(n: int) -> str:
    """``64 MiB`` for whole MiB, ``1.5 MiB`` from 1 MiB up, else bytes."""
    if n and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


class _LineTooLong(Exception):
    def __init__(self, lineno: int) -> None:
        self.lineno = lineno


def _lines(f: IO[bytes], limit: int) -> Iterator[bytes]:
    """Lines ending in LF, CRLF or a lone CR (old Mac files), without their ends: each is one
    numbered line. Read in chunks, holding at most ``limit`` bytes of a line: a longer one
    raises :class:`_LineTooLong` with its number, without the rest of it being read."""
    line, n, after_cr = bytearray(), 0, False
    while chunk := f.read(_CHUNK):
        if after_cr and chunk.startswith(b"\n"):  # the LF of a CRLF cut by the chunk border
            chunk = chunk[1:]
        after_cr = chunk.endswith(b"\r")
        for piece in chunk.splitlines(keepends=True):
            body = piece.rstrip(b"\r\n")
            if len(line) + len(body) > limit:
                raise _LineTooLong(n + 1)
            if len(body) == len(piece):  # no end yet: continued in the next chunk
                line += body
                continue
            n += 1
            yield bytes(line) + body if line else body
            line.clear()
    if line:
        yield bytes(line)


def read_jsonl(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> list[Any]:
    """The JSON value of every non-blank line (gzip if the name ends in .gz; a UTF-8 BOM on the
    first line is ignored). A bad line raises ``error`` naming the file and line, as does a line
    longer than ``GPO_MAX_LINE_MB`` (64 MiB), which is refused without being read whole."""
    path = Path(path)
    limit = env_limit(MAX_LINE_ENV, MAX_LINE_MIB)
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rb") as f:
        try:
            for lineno, raw in enumerate(_lines(f, limit), 1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise error(f"{path}: line {lineno}: not valid UTF-8 ({e.reason})") from None
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise error(f"{path}: line {lineno}: malformed JSON ({e.msg})") from None
        except _LineTooLong as e:
            raise error(
                f"{path}: line {e.lineno}: longer than {size_text(limit)}, the most gpo reads "
                f"of one line (a row this long is refused unread; set {MAX_LINE_ENV} to raise "
                "the limit)"
            ) from None
    return rows


def read_yaml_mapping(
    path: str | Path, label: str, known: set[str], hint: Callable[[str], str]
) -> dict[str, Any]:
    """A YAML file's top-level mapping (empty file: ``{}``); one-line errors start with
    ``"{label} {path}"``; every unknown key is named, each with ``hint(key)`` appended."""
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{label} {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{label} {path}: invalid YAML ({e})") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise ValueError(f"{label} {path}: expected a mapping of keys to values")
    unknown = [f"{key!r}{hint(str(key))}" for key in loaded if key not in known]
    if unknown:  # every one at once: a file from another tool has several
        keys = "key" if len(unknown) == 1 else f"keys ({len(unknown)})"
        raise ValueError(f"{label} {path}: unknown {keys} {', '.join(unknown)}")
    return loaded


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display on servers).

    Imported only when a figure is drawn, which keeps ``gpo`` start-up fast; selecting the
    backend here rather than at import leaves an importing application's own backend alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def import_object(path: str, what: str) -> Any:
    """The object ``pkg.module:attr`` names (``attr`` may be dotted), for a user's loss or judge
    (``what`` names it in errors). Importing runs the module's code: only trusted code.

    One rule under ``gpo`` and ``python -m gpo.cli`` (whose __main__ takes off the working
    directory that ``python -m`` puts first): installed packages and PYTHONPATH win, then the
    working directory, appended last, so a module next to the user's data imports. Only for this
    import: left on sys.path, it would shadow later imports of the process."""
    module_name, _, attr = path.partition(":")
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"cannot import module {module_name!r} for {what} {path!r}: {e} (searched the "
            f"installed packages, PYTHONPATH and the working directory {cwd})"
        ) from e
    finally:
        if added and cwd in sys.path:
            del sys.path[len(sys.path) - 1 - sys.path[::-1].index(cwd)]  # ours: the last one
    try:
        obj: object = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ValueError(
            f"module {module_name!r} has no attribute {attr!r} ({what} {path!r})"
        ) from None
    return obj
