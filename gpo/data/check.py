"""``gpo data check``: what training would make of a dataset, before training on it.

Reads the source as training does, validates every row (collecting each bad row instead of
stopping at the first), tokenizes with the model's tokenizer and the training limits, and reports
the format found, rows kept and dropped and why, token-length percentiles before truncation, and
a few pairs rendered as the model sees them (chat template applied, EOS included).

With ``online`` (``gpo data check --online``), a prompt-only source (:mod:`gpo.data.prompts`)
is checked as ``gpo train --online`` reads it: rows, prompt token lengths, rendered prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gpo.data.formats import DataError, PreferenceRow, detect_format, parse_row
from gpo.data.prompts import is_prompt_only, parse_prompt_row, refuse_offline, tokenize_prompts
from gpo.data.sources import load_rows
from gpo.data.tokenize import DataReport, Limits, TokenizedPair, tokenize_rows

KNOWN_FIELDS = ("prompt", "chosen", "rejected", "chosen_finished", "rejected_finished")
PERCENTILES = (50, 90, 99, 100)
SHOWN_CHARS = 1200  # of each rendered part of an example; the rest is summarized


@dataclass
class CheckResult:
    source: str  # "name[split]"
    format: str  # e.g. "standard (prompt/chosen/rejected strings), prompt field in 8 of 8 rows"
    rows: int
    invalid: list[str] = field(default_factory=list)  # one error per bad row
    ignored_fields: list[str] = field(default_factory=list)
    report: DataReport | None = None  # None when no row is valid
    lengths: dict[str, list[int]] = field(default_factory=dict)  # untruncated token counts
    examples: list[tuple[int, str, str, str]] = field(default_factory=list)  # row, p, c, r

    @property
    def problem(self) -> str | None:
        """The error training would stop with, if any."""
        if self.invalid:
            return self.invalid[0]
        if self.report is None or self.report.kept == 0:
            return f"no usable rows left: {self.report or self.source}"
        return None


def _describe_format(raw: list[Any], conversational: bool) -> str:
    kind = (
        "conversational (message lists, rendered with the chat template)"
        if conversational
        else "standard (prompt/chosen/rejected strings)"
    )
    with_prompt = sum(isinstance(r, dict) and r.get("prompt") is not None for r in raw)
    if with_prompt == len(raw):
        return f"{kind}, explicit prompt"
    if with_prompt == 0:
        return f"{kind}, implicit prompt (the shared start of chosen and rejected)"
    return f"{kind}, prompt field in {with_prompt} of {len(raw)} rows (the others: implicit)"


def _ignored_fields(raw: list[Any]) -> list[str]:
    names = {k for r in raw if isinstance(r, dict) for k in r}
    return sorted(str(k) for k in names - set(KNOWN_FIELDS))


def _parse_all(
    raw: list[Any], label: str, conversational: bool, parse: Any = parse_row
) -> tuple[list[Any], list[str]]:
    valid: list[PreferenceRow] = []
    invalid: list[str] = []
    for i, r in enumerate(raw):
        try:
            valid.append(parse(r, label, i, conversational))
        except DataError as e:
            invalid.append(str(e))
    return valid, invalid


def _render(pair: TokenizedPair, tokenizer: Any) -> tuple[int, str, str, str]:
    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False)

    return pair.index, text(pair.prompt_ids), text(pair.chosen_ids), text(pair.rejected_ids)


def read_source(source: str, split: str | None, online: bool = False) -> tuple[str, list[Any]]:
    """``(label, raw rows)``; raises :class:`DataError` when the source cannot be read at all
    (missing file, malformed JSON, no rows, a first row that is no preference pair, prompt-only
    rows without ``online``). Cheap: done before any tokenizer is loaded."""
    label = f"{source}[{split or 'train'}]"
    raw = load_rows(source, split)
    refuse_offline(raw, label, online)
    if not is_prompt_only(raw):
        detect_format(raw, label)  # no rows, or not preference data at all: say so now
    return label, raw


def check_prompts(
    label: str, raw: list[Any], tokenizer: Any, limits: Limits, n_examples: int = 3
) -> CheckResult:
    """:func:`check_rows` for prompt-only rows (``gpo train --online``)."""
    conversational = isinstance(raw[0]["prompt"], list)
    kind = "conversational (message lists)" if conversational else "standard (strings)"
    valid, invalid = _parse_all(raw, label, conversational, parse_prompt_row)
    fmt = f"prompt-only, {kind}: for gpo train --online"
    result = CheckResult(label, fmt, len(raw), invalid, _ignored_fields(raw))
    if not valid:
        return result
    lengths: list[int] = []
    pairs, result.report = tokenize_prompts(
        valid, tokenizer, limits, label, raw_lengths=lengths, allow_empty=True
    )
    result.lengths = {"prompt": lengths}
    result.examples = [_render(p, tokenizer) for p in pairs[:n_examples]]
    return result


def check_rows(
    label: str, raw: list[Any], tokenizer: Any, limits: Limits, n_examples: int = 3
) -> CheckResult:
    """Everything ``gpo data check`` prints about the raw rows read from ``label``."""
    if is_prompt_only(raw):
        return check_prompts(label, raw, tokenizer, limits, n_examples)
    conversational = detect_format(raw, label)
    valid, invalid = _parse_all(raw, label, conversational)
    result = CheckResult(
        label, _describe_format(raw, conversational), len(raw), invalid, _ignored_fields(raw)
    )
    if not valid:
        return result
    raw_lengths: list[tuple[int, int, int]] = []
    pairs, result.report = tokenize_rows(
        valid, tokenizer, limits, label, raw_lengths=raw_lengths, allow_empty=True
    )
    result.lengths = {
        "prompt": [p for p, _, _ in raw_lengths],
        "chosen": [c for _, c, _ in raw_lengths],
        "rejected": [r for _, _, r in raw_lengths],
        "prompt + longer reply": [p + max(c, r) for p, c, r in raw_lengths],
    }
    result.examples = [_render(p, tokenizer) for p in pairs[:n_examples]]
    return result


def percentile(values: list[int], q: float) -> int:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _clip(text: str) -> str:
    more = len(text) - SHOWN_CHARS
    return text if more <= 0 else f"{text[:SHOWN_CHARS]}... ({more} more characters)"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in (_clip(text).splitlines() or [""]))


def _length_table(result: CheckResult) -> list[str]:
    pair = result.lengths.get("prompt + longer reply") or []
    what = "pair"
    if not pair and list(result.lengths) == ["prompt"]:  # prompt-only rows
        pair, what = result.lengths["prompt"], "prompt"
    if not pair:
        return []
    head = "".join(f"{'max' if q == 100 else f'p{q}':>8}" for q in PERCENTILES)
    title = f"tokens per {what}, before truncation ({len(pair)} {what}s):"
    lines = [title, f"  {'':<22}{head}"]
    for name, values in result.lengths.items():
        cells = "".join(f"{percentile(values, q):>8}" for q in PERCENTILES)
        lines.append(f"  {name:<22}{cells}")
    return lines


def _example_lines(result: CheckResult) -> list[str]:
    lines = []
    for n, (row, prompt, chosen, rejected) in enumerate(result.examples, 1):
        lines.append(f"example {n} (row {row + 1}), as the model sees it:")
        for name, text in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            if name == "prompt" or text:  # prompt-only rows have no responses
                lines += [f"  {name}:", _indent(text)]
    return lines


def format_check(result: CheckResult) -> str:
    """The report ``gpo data check`` prints."""
    lines = [f"source: {result.source}", f"format: {result.format}"]
    if result.ignored_fields:
        lines.append(f"other fields (not used): {', '.join(result.ignored_fields)}")
    bad = len(result.invalid)
    lines.append(f"rows: {result.rows}, valid {result.rows - bad}, invalid {bad}")
    if bad:
        lines.append("invalid rows (training stops at the first):")
        lines += [f"  {e}" for e in result.invalid[:10]]
        if bad > 10:
            lines.append(f"  ... and {bad - 10} more")
    if result.report is not None:
        lines.append(f"tokenized: {result.report}")
    return "\n".join(lines + _length_table(result) + _example_lines(result))
