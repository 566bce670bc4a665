"""TRL's preference formats: validate rows and normalize them to (prompt, chosen, rejected).

Formats (decided by the first row; every row must use the same one):
- standard: ``prompt``, ``chosen``, ``rejected`` strings;
- conversational: lists of ``{"role", "content"}`` messages (``prompt`` ends before the reply,
  ``chosen`` / ``rejected`` hold the assistant reply), rendered with the tokenizer's chat template;
- implicit prompt (either format without a ``prompt`` field): the shared prefix of ``chosen`` and
  ``rejected`` is the prompt. For strings the split is moved back to a space, as TRL does.

A gpo extension: optional booleans ``chosen_finished`` / ``rejected_finished``. ``false`` marks a
response cut off by a generation limit (the model never ended it), so no EOS or end-of-turn is
added to it and its log-prob is that of the text actually sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
Messages = list[dict[str, str]]
Field = str | Messages


class DataError(ValueError):
    """A data problem, with the file, row and field in its message."""


class NoSuchSplit(DataError):
    """The source has no split of the requested name."""


class NoSplits(NoSuchSplit):
    """The source is one set of rows with no named splits (a .jsonl file, a JSON list, ...)."""


@dataclass(frozen=True)
class PreferenceRow:
    """One validated example; ``conversational`` tells how to render it."""

    prompt: Field
    chosen: Field
    rejected: Field
    conversational: bool
    index: int  # row number in the source (0-based)
    chosen_finished: bool = True
    rejected_finished: bool = True


def prompt_text(prompt: Field | PreferenceRow) -> str:
    """The user's request: a prompt string as is, else the last user message of a message list
    (the last message when none is from the user). Gold topics and win-rate prompts use this."""
    if isinstance(prompt, PreferenceRow):
        prompt = prompt.prompt
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        raise ValueError("empty conversational prompt")
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]


def _where(source: str, index: int, field: str | None = None) -> str:
    loc = f"{source}: row {index + 1}"
    return f"{loc}, field '{field}'" if field else loc


def _check_text(value: str, where: str) -> str:
    """Reject text a tokenizer cannot encode (lone surrogates, e.g. from a ``\\ud800`` escape)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            f"{where}: not valid Unicode text ({e.reason} at character {e.start + 1})"
        ) from None
    return value


def _check_messages(value: list[Any], where: str) -> Messages:
    if not value:
        raise DataError(f"{where}: empty list of messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {i + 1} must be a {{'role', 'content'}} object")
        if m["role"] not in ROLES:
            raise DataError(
                f"{where}: message {i + 1} has unknown role {m['role']!r} "
                f"(expected one of {', '.join(ROLES)})"
            )
        extra = sorted(set(m) - {"role", "content"})
        if extra:  # e.g. tool_calls, name: dropping them silently would change the conversation
            raise DataError(
                f"{where}: message {i + 1} has {', '.join(map(repr, extra))}: gpo trains on "
                "role and content only; remove the key or write it into the content"
            )
        content = m["content"]
        if content is None or isinstance(content, list):
            what = "null" if content is None else "a list of parts (multimodal?)"
            raise DataError(
                f"{where}: message {i + 1} content is {what}; only text content is supported"
            )
        if not isinstance(content, str):
            raise DataError(
                f"{where}: message {i + 1} content must be a string, got {type(content).__name__}"
            )
        _check_text(m["content"], f"{where}: message {i + 1} content")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _field(row: dict[str, Any], name: str, source: str, index: int, conversational: bool) -> Field:
    where = _where(source, index, name)
    if name not in row:
        present = ", ".join(sorted(row)) or "none"
        raise DataError(f"{where}: missing (fields present: {present})")
    if row[name] is None:
        kind = "a list of messages" if conversational else "a string"
        raise DataError(f"{where}: is null (expected {kind})")
    value = row[name]
    like = " like the first row" if index > 0 else ""  # the first row sets the format
    if conversational:
        if not isinstance(value, list):
            mixed = " (mixed formats in one dataset?)" if isinstance(value, str) else ""
            raise DataError(
                f"{where}: expected a list of messages{like}, got {type(value).__name__}{mixed}"
            )
        return _check_messages(value, where)
    if not isinstance(value, str):
        mixed = " (mixed formats in one dataset?)" if isinstance(value, list) else ""
        raise DataError(f"{where}: expected a string{like}, got {type(value).__name__}{mixed}")
    return _check_text(value, where)


def _split_implicit_text(chosen: str, rejected: str) -> int:
    n = min(len(chosen), len(rejected))
    idx = next((i for i in range(n) if chosen[i] != rejected[i]), n)
    if idx > 0 and chosen[idx - 1] == " ":
        idx -= 1  # keep the space with the completion, as TRL does
    return idx


def _split_implicit_messages(chosen: Messages, rejected: Messages) -> int:
    n = min(len(chosen), len(rejected))
    return next((i for i in range(n) if chosen[i] != rejected[i]), n)


def _is_empty(value: Field) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return not any(m["content"].strip() for m in value)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a JSON boolean"
    if isinstance(value, (int, float)):
        return "a JSON number"
    kinds = {list: "a JSON array", str: "a JSON string"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _not_an_object(row: Any, where: str) -> DataError:
    # Named as JSON sees it: a row written as an array of values is the usual slip.
    return DataError(
        f"{where}: is {_json_kind(row)}, not an object with 'chosen' and 'rejected' fields"
    )


def _check_row_format(row: dict[str, Any], where: str) -> None:
    """One row must not mix strings and message lists (a list prompt with string replies)."""
    kinds = {
        name: "a message list" if isinstance(row[name], list) else "a string"
        for name in ("prompt", "chosen", "rejected")
        if isinstance(row.get(name), (list, str))
    }
    (a, kind_a), *rest = list(kinds.items()) or [("", "")]
    for b, kind_b in rest:
        if kind_b != kind_a:
            raise DataError(
                f"{where}: {a} is {kind_a} but {b} is {kind_b}: mixed formats in one row"
            )


def _check_not_repeated(
    prompt: Messages, chosen: Messages, rejected: Messages, source: str, index: int
) -> None:
    """A reply that starts with the whole prompt would put the conversation in twice."""
    n = len(prompt)
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if len(value) > n and value[:n] == prompt:
            raise DataError(
                f"{_where(source, index, name)}: repeats the whole prompt (its first {n} "
                f"message(s)); with a 'prompt' field, {name} holds only the reply: drop the "
                "repeated messages, or the 'prompt' field"
            )


def parse_row(row: Any, source: str, index: int, conversational: bool) -> PreferenceRow:
    """Validate one raw row; raise :class:`DataError` naming source, row and field."""
    if not isinstance(row, dict):
        raise _not_an_object(row, _where(source, index))
    _check_row_format(row, _where(source, index))
    chosen = _field(row, "chosen", source, index, conversational)
    rejected = _field(row, "rejected", source, index, conversational)
    finished = _finished(row, source, index)
    if row.get("prompt") is None and chosen == rejected:
        # No preference to learn: dropped and counted when tokenized, as with a prompt field.
        empty: Field = [] if conversational else ""
        return PreferenceRow(empty, chosen, rejected, conversational, index, *finished)
    if "prompt" in row and row["prompt"] is not None:
        prompt = _field(row, "prompt", source, index, conversational)
        if conversational:
            _check_not_repeated(prompt, chosen, rejected, source, index)  # type: ignore[arg-type]
    else:
        split = _split_implicit_messages if conversational else _split_implicit_text
        cut = split(chosen, rejected)  # type: ignore[arg-type]
        if cut == 0:
            shared = "leading messages" if conversational else "common prefix"
            raise DataError(
                f"{_where(source, index)}: no 'prompt' field and chosen/rejected "
                f"share no {shared} to use as the prompt"
            )
        prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
        sides = (("chosen", "rejected", chosen), ("rejected", "chosen", rejected))
        for name, other, value in sides:
            if not (value.strip() if isinstance(value, str) else value):  # all of it is shared
                raise DataError(
                    f"{_where(source, index, name)}: no 'prompt' field, and {name} is a prefix of "
                    f"{other}, so nothing of it is left after the shared prompt; add a "
                    "'prompt' field"
                )
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if _is_empty(value):
            raise DataError(f"{_where(source, index, name)}: empty or whitespace-only response")
        if conversational and value[-1]["role"] != "assistant":  # type: ignore[index]
            raise DataError(
                f"{_where(source, index, name)}: the last message must be from the assistant, "
                f"got {value[-1]['role']!r}"  # type: ignore[index]
            )
    return PreferenceRow(prompt, chosen, rejected, conversational, index, *finished)


def _finished(row: dict[str, Any], source: str, index: int) -> list[bool]:
    finished = []
    for name in ("chosen_finished", "rejected_finished"):
        value = row.get(name, True)
        if not isinstance(value, bool):
            raise DataError(f"{_where(source, index, name)}: expected true or false, got {value!r}")
        finished.append(value)
    return finished


def parse_rows(rows: list[Any], source: str) -> list[PreferenceRow]:
    """Validate all rows; the first row's ``chosen`` decides the format for the whole set."""
    conversational = detect_format(rows, source)
    return [parse_row(r, source, i, conversational) for i, r in enumerate(rows)]


def detect_format(rows: list[Any], source: str) -> bool:
    """Whether the set is conversational, decided by the first row's ``chosen``."""
    if not rows:
        raise DataError(f"{source}: no rows")
    first = rows[0]
    if not isinstance(first, dict):
        raise _not_an_object(first, _where(source, 0))
    if "chosen" not in first:
        raise DataError(f"{_where(source, 0, 'chosen')}: missing (is this preference data?)")
    return isinstance(first["chosen"], list)
