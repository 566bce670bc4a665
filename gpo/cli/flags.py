"""Command-line flags derived from a config dataclass, so flags, defaults and help cannot drift
from the config: one ``--flag`` per init field, typed from its annotation, helped by the field's
trailing ``# comment``; flags not given stay absent, so the dataclass supplies every default.

A field may rename its flag with ``field(metadata={"flag": "--points"})``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import tokenize
import typing
from collections.abc import Collection
from functools import cache
from typing import Any

from gpo.train.config import field_types


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _none_or(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


@cache
def field_comments(cls: type) -> dict[str, str]:
    """Each field's trailing ``# comment`` in the source of dataclass ``cls``."""
    lines = inspect.getsource(cls).splitlines(keepends=True)
    body = next(i for i, line in enumerate(lines) if line.lstrip().startswith("class ")) + 1
    first = next(line for line in lines[body:] if line.strip())
    indent = len(first) - len(first.lstrip())
    comments: dict[str, str] = {}
    field_name = None
    for tok in tokenize.generate_tokens(iter(lines).__next__):
        if (
            tok.type == tokenize.NAME
            and tok.start[1] == indent
            and tok.line.strip().startswith(tok.string + ":")
        ):
            field_name = tok.string
        elif tok.type == tokenize.COMMENT and field_name and field_name not in comments:
            if tok.start[1] > indent:  # trailing, not a section heading like "# model options"
                comments[field_name] = tok.string.lstrip("# ").strip()
        elif tok.type == tokenize.NAME and tok.string == "def":
            break
    return comments


def _init_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def flag_name(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    helps: dict[str, str] | None = None,
    names: Collection[str] | None = None,
) -> None:
    """One flag per init field of dataclass ``cls`` (help: ``helps[name]``, else its comment);
    only the fields in ``names`` if given."""
    hints = typing.get_type_hints(cls)
    helps = {**field_comments(cls), **(helps or {})}
    for f in _init_fields(cls):
        if names is not None and f.name not in names:
            continue
        kinds, choices = field_types(hints[f.name])
        common = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": (helps.get(f.name, "") + f" (default: {_default(f)})").lstrip(),
        }
        flag = flag_name(f)
        if kinds == [bool]:
            parser.add_argument(
                flag, type=_parse_bool, metavar="BOOL", nargs="?", const=True, **common
            )
        elif kinds == [list]:
            (item,) = typing.get_args(hints[f.name]) or (str,)
            kind = item if item in (int, float, str) else str
            parser.add_argument(flag, nargs="+", type=kind, metavar=kind.__name__.upper(), **common)
        elif choices is not None:
            parser.add_argument(flag, choices=choices, **common)
        else:
            base = next(k for k in kinds if k is not type(None))
            kind = _none_or(base) if type(None) in kinds else base
            parser.add_argument(flag, type=kind, metavar=base.__name__.upper(), **common)


def values_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` given on the command line (absent flags are left out)."""
    return {f.name: getattr(args, f.name) for f in _init_fields(cls) if hasattr(args, f.name)}
