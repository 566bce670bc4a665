"""TRL's prompt-only format: rows ``{"prompt": ...}`` with no ``chosen`` / ``rejected``, for
``gpo train --online`` (docs/online.md), which samples and judges its own pairs.

The prompt is a string (standard) or a list of messages (conversational, rendered with the
chat template and its generation prompt), decided by the first row, as for preference rows.
A prompt-only row becomes a :class:`~gpo.data.formats.PreferenceRow` with empty ``chosen`` and
``rejected`` and a :class:`~gpo.data.tokenize.TokenizedPair` with no response ids: only its
prompt is ever used. Offline training needs pairs, so it refuses these rows in one line.

Limits: a prompt longer than ``max_prompt_length`` is cut (``prompt_truncation``); one that
leaves no room for a single sampled token in ``max_length`` is dropped and counted
(``overlong="drop"``) or cut to ``max_length - 1`` tokens (``"truncate"``).
"""

from __future__ import annotations

from typing import Any

from gpo.data.formats import (
    DataError,
    PreferenceRow,
    _field,
    _is_empty,
    _json_kind,
    _where,
    parse_rows,
)
from gpo.data.tokenize import DataReport, Limits, TokenizedPair, _cut, _ids, tokenize_rows

RESPONSES = ("chosen", "rejected")


def is_prompt_only(rows: list[Any]) -> bool:
    """Whether the set is prompt-only: its first row has a ``prompt`` and no response field."""
    first = rows[0] if rows else None
    return isinstance(first, dict) and "prompt" in first and not set(RESPONSES) & set(first)


def parse_prompt_row(row: Any, source: str, index: int, conversational: bool) -> PreferenceRow:
    """Validate one prompt-only row; raise :class:`DataError` naming source, row and field."""
    where = _where(source, index)
    if not isinstance(row, dict):
        raise DataError(f"{where}: is {_json_kind(row)}, not an object with a 'prompt' field")
    if set(RESPONSES) & set(row):
        raise DataError(
            f"{where}: has 'chosen'/'rejected', but the first row is prompt-only (a 'prompt' "
            "and no responses): one format per dataset"
        )
    prompt = _field(row, "prompt", source, index, conversational)
    if _is_empty(prompt):
        raise DataError(f"{_where(source, index, 'prompt')}: empty or whitespace-only prompt")
    empty: Any = [] if conversational else ""
    return PreferenceRow(prompt, empty, empty, conversational, index)


def refuse_offline(rows: list[Any], source: str, online: bool) -> None:
    """Prompt-only rows without ``online``: refused in one line."""
    if is_prompt_only(rows) and not online:
        raise DataError(
            f"{source}: prompt-only rows (a 'prompt' and no 'chosen'/'rejected'): offline "
            "training needs preference pairs; pass --online to sample and judge pairs from "
            "these prompts"
        )


def parse_source(rows: list[Any], source: str, online: bool) -> tuple[list[PreferenceRow], bool]:
    """``(rows, prompt_only)``: preference rows (:func:`gpo.data.formats.parse_rows`) or, with
    ``online``, prompt-only rows; prompt-only rows offline are refused in one line."""
    if not is_prompt_only(rows):
        return parse_rows(rows, source), False
    refuse_offline(rows, source, online)
    conversational = isinstance(rows[0]["prompt"], list)
    return [parse_prompt_row(r, source, i, conversational) for i, r in enumerate(rows)], True


def render_prompt(row: PreferenceRow, tokenizer: Any, source: str) -> list[int]:
    """A prompt's token ids: ``tokenizer(prompt)``, or the chat template with its generation
    prompt (as a preference row's prompt is rendered)."""
    if not row.conversational:
        return _ids(tokenizer(row.prompt))
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{source}: conversational prompts need a tokenizer with a chat template, and this "
            "tokenizer has none: pass string prompts, or a chat template with --chat-template"
        )
    out = tokenizer.apply_chat_template(
        row.prompt, tokenize=True, add_generation_prompt=True, return_dict=True
    )
    return _ids(out)


def tokenize_prompts(
    rows: list[PreferenceRow],
    tokenizer: Any,
    limits: Limits,
    source: str,
    *,
    raw_lengths: list[int] | None = None,
    allow_empty: bool = False,
) -> tuple[list[TokenizedPair], DataReport]:
    """Prompt-only rows as pairs with no responses, cut to ``limits`` (module docstring);
    raise :class:`DataError` if nothing usable is left (unless ``allow_empty``).
    ``raw_lengths`` collects each prompt's untruncated token count."""
    report = DataReport(source, rows=len(rows), max_length=limits.max_length)
    unk = getattr(tokenizer, "unk_token_id", None)
    pairs = []
    for row in rows:
        ids = render_prompt(row, tokenizer, source)
        if raw_lengths is not None:
            raw_lengths.append(len(ids))
        if limits.max_prompt_length is not None and len(ids) > limits.max_prompt_length:
            ids = _cut(ids, limits.max_prompt_length, limits.prompt_truncation)
            report.truncated_prompts += 1
        if len(ids) > limits.max_length - 1:  # no room left for one sampled token
            if limits.overlong == "drop":
                report.too_long += 1
                report.dropped_indices.append(row.index)
                continue
            ids = _cut(ids, limits.max_length - 1, limits.prompt_truncation)
            report.fitted += 1
        pairs.append(TokenizedPair(row.index, ids, [], []))
        report.count(ids, unk)
    report.close(len(pairs), allow_empty)
    return pairs, report


def tokenize_source(
    rows: list[PreferenceRow], prompt_only: bool, tokenizer: Any, limits: Limits, source: str
) -> tuple[list[TokenizedPair], DataReport]:
    """Preference rows (:func:`gpo.data.tokenize.tokenize_rows`) or prompt-only rows."""
    if prompt_only:
        return tokenize_prompts(rows, tokenizer, limits, source)
    return tokenize_rows(rows, tokenizer, limits, source)
