"""Render validated rows to token ids, truncate, and drop what cannot be used.

Rendering follows TRL 1.x so that the same row gives the same tokens in both tools:
- standard rows: ``tokenizer(prompt)`` and ``tokenizer(prompt + completion)``, with the EOS token
  string appended to a completion that does not already end with it;
- conversational rows: ``apply_chat_template(prompt, add_generation_prompt=True)`` and
  ``apply_chat_template(prompt + completion)``; the template ends the turn itself, and the EOS id
  is appended only if the rendered completion does not contain it.
Conversational replies end just after their first EOS (tokens a template adds after it, such as
ChatML's newline, are never sampled, so they are not scored). A completion marked unfinished
(``chosen_finished: false``, see ``formats``) gets no EOS at all.
The completion starts where the tokenized prompt and prompt+completion diverge (tokens can merge
across the boundary).

Truncation (``Limits``): a prompt longer than ``max_prompt_length`` keeps its end
(``prompt_truncation="keep_end"``, the part next to the response) or its start (``"keep_start"``);
a completion longer than ``max_completion_length`` keeps its start (its EOS is then lost). A pair
whose prompt + longer completion still exceeds ``max_length`` is dropped and counted
(``overlong="drop"``), or truncated to fit (``overlong="truncate"``, TRL's habit): the completions
keep their start, and the prompt is cut too (by ``prompt_truncation``) only when it alone would
leave no room for one completion token. A pair whose chosen and rejected responses are identical
is dropped and counted. Duplicate pairs are kept and counted in the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from gpo.data.formats import DataError, PreferenceRow

Ids = tuple[list[int], list[int], list[int]]  # prompt, chosen, rejected token ids

#: The share of unknown tokens above which the data report warns.
UNKNOWN_SHARE = 0.01


@dataclass(frozen=True)
class Limits:
    max_length: int = 1024  # tokens per prompt + completion (TRL's default); see `overlong`
    max_prompt_length: int | None = None  # tokens; longer prompts are truncated
    max_completion_length: int | None = None  # tokens; longer responses keep their start
    prompt_truncation: Literal["keep_end", "keep_start"] = "keep_end"  # which part is kept
    overlong: Literal["drop", "truncate"] = "drop"  # pairs over max_length: drop or truncate

    def __post_init__(self) -> None:
        for name, allowed in (
            ("prompt_truncation", ("keep_end", "keep_start")),
            ("overlong", ("drop", "truncate")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be {' or '.join(map(repr, allowed))}, got {getattr(self, name)!r}"
                )
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"{name} must be at least 2, got {value}")


@dataclass(frozen=True)
class TokenizedPair:
    index: int  # row in the source
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    #: P(chosen beats rejected) for soft labels (online pairs, ``gpo.train.labels``); ``None``:
    #: a hard label (the data's, or a drawn winner).
    p_chosen: float | None = None


@dataclass
class DataReport:
    source: str
    rows: int = 0
    kept: int = 0
    identical: int = 0
    too_long: int = 0  # dropped: longer than max_length (overlong="drop")
    fitted: int = 0  # truncated to max_length (overlong="truncate")
    truncated_prompts: int = 0
    truncated_completions: int = 0
    duplicates: int = 0  # kept rows whose text equals an earlier kept row's (kept: see below)
    tokens: int = 0  # prompt + both responses of the kept pairs
    unknown_tokens: int = 0  # of those, the tokenizer's unknown token (text it cannot encode)
    dropped_indices: list[int] = field(default_factory=list)
    max_length: int | None = None  # the limit the counts above refer to

    def __str__(self) -> str:
        rows = "1 row" if self.rows == 1 else f"{self.rows} rows"
        parts = [f"{self.source}: {rows}, kept {self.kept}"]
        if self.identical:
            parts.append(f"dropped {self.identical} with chosen == rejected")
        if self.too_long:
            parts.append(
                f"dropped {self.too_long} longer than max_length {self.max_length} "
                "(set overlong=truncate to keep them)"
            )
        if self.fitted:
            parts.append(f"{self.fitted} truncated to max_length {self.max_length}")
        if self.truncated_prompts:
            parts.append(f"truncated {self.truncated_prompts} prompts")
        if self.truncated_completions:
            parts.append(f"truncated {self.truncated_completions} completions")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate pairs (kept)")
        return "; ".join(parts)

    def count(self, ids: list[int], unk: int | None) -> None:
        """A kept row's tokens, and how many of them are the unknown token ``unk``."""
        self.tokens += len(ids)
        self.unknown_tokens += 0 if unk is None else ids.count(unk)

    def close(self, kept: int, allow_empty: bool) -> None:
        """The rows kept; none (unless allowed) is an error."""
        self.kept = kept
        if not kept and not allow_empty:
            raise DataError(f"no usable rows left: {self}")

    def unknown_warning(self) -> str | None:
        """More than 1% unknown tokens: the tokenizer cannot represent much of the text, and
        training would learn from placeholder tokens, not the words."""
        if not self.tokens or self.unknown_tokens <= UNKNOWN_SHARE * self.tokens:
            return None
        return (
            f"{self.source}: {self.unknown_tokens / self.tokens:.0%} of the tokens "
            f"({self.unknown_tokens} of {self.tokens}) are the tokenizer's unknown token: it "
            "cannot encode much of this text; use the model's own tokenizer, or check the data"
        )


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _ids(out: Any) -> list[int]:
    ids = out["input_ids"] if not isinstance(out, list) else out
    return list(ids)


def _reply_texts(row: PreferenceRow) -> list[tuple[str, str]]:
    """``(field, text)`` of each reply: the strings, or the reply messages' contents."""
    out = []
    for name in ("chosen", "rejected"):
        value = getattr(row, name)
        texts = [value] if isinstance(value, str) else [m["content"] for m in value]
        out += [(name, t) for t in texts]
    return out


def check_special_tokens(row: PreferenceRow, tokenizer: Any, source: str) -> None:
    """A literal control token inside a reply (e.g. ``<|im_end|>``) would be read as one and cut
    the reply short; only a standard reply's final EOS is allowed (it is added anyway)."""
    special = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    for name, text in _reply_texts(row):
        if not row.conversational and tokenizer.eos_token and text.endswith(tokenizer.eos_token):
            text = text[: -len(tokenizer.eos_token)]
        found = next((t for t in special if t in text), None)
        if found is not None:
            raise DataError(
                f"{source}: row {row.index + 1}, field '{name}': contains the special token "
                f"{found!r}, which the model reads as a control token (it would cut the reply "
                "short); remove it"
            )


def _start_empty_prompt(row: PreferenceRow, tokenizer: Any, source: str, ids: Ids) -> Ids:
    """An empty prompt gives no token to predict the first response token from: start it
    with BOS, or refuse when the tokenizer has none."""
    bos = tokenizer.bos_token_id
    if bos is None:
        raise DataError(
            f"{source}: row {row.index + 1}, field 'prompt': empty, and the tokenizer has no "
            "BOS token to start from, so the first response token could not be scored"
        )
    return [bos], *ids[1:]  # type: ignore[return-value]


def render_ids(row: PreferenceRow, tokenizer: Any, source: str) -> Ids:
    """``(prompt_ids, chosen_ids, rejected_ids)`` for one row, TRL-style (see module doc)."""
    check_special_tokens(row, tokenizer, source)
    if row.conversational:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                f"{source}: conversational data needs a tokenizer with a chat template, and this "
                "tokenizer has none: pass standard data (prompt/chosen/rejected strings) with "
                "--data, or a chat template with --chat-template FILE (a Jinja file)"
            )

        def render(msgs: Any, gen: bool) -> list[int]:
            return _ids(
                tokenizer.apply_chat_template(
                    msgs, tokenize=True, add_generation_prompt=gen, return_dict=True
                )
            )

        prompt = render(row.prompt, True)
        full_c = render(row.prompt + row.chosen, False)  # type: ignore[operator]
        full_r = render(row.prompt + row.rejected, False)  # type: ignore[operator]
    else:
        eos = tokenizer.eos_token or ""

        def with_eos(text: str, finished: bool) -> str:
            return text if text.endswith(eos) or not finished else text + eos

        prompt = _ids(tokenizer(row.prompt))
        full_c = _ids(tokenizer(row.prompt + with_eos(row.chosen, row.chosen_finished)))  # type: ignore[operator]
        full_r = _ids(tokenizer(row.prompt + with_eos(row.rejected, row.rejected_finished)))  # type: ignore[operator]
    cut = min(_common_prefix(prompt, full_c), _common_prefix(prompt, full_r))
    chosen, rejected = full_c[cut:], full_r[cut:]
    if row.conversational:
        chosen = _end_turn(chosen, tokenizer.eos_token_id, row.chosen_finished)
        rejected = _end_turn(rejected, tokenizer.eos_token_id, row.rejected_finished)
    if cut == 0:
        return _start_empty_prompt(row, tokenizer, source, ([], chosen, rejected))
    return prompt[:cut], chosen, rejected


def _end_turn(ids: list[int], eos_id: int | None, finished: bool) -> list[int]:
    """End a rendered reply where sampling would: just after its first EOS (what a template
    adds after it, e.g. a newline, is never generated); an unfinished reply stops before it."""
    if eos_id is None:
        return ids
    if eos_id not in ids:
        return [*ids, eos_id] if finished else ids
    end = ids.index(eos_id)
    return ids[: end + 1] if finished else ids[:end]


def _cut(ids: list[int], keep: int, how: str) -> list[int]:
    return ids[-keep:] if how == "keep_end" else ids[:keep]


def apply_limits(ids: Ids, limits: Limits, report: DataReport) -> Ids | None:
    """Truncate ``(prompt, chosen, rejected)`` to ``limits``, counting in ``report``; ``None``
    when the pair is longer than ``max_length`` and ``overlong`` is ``"drop"``."""
    prompt, chosen, rejected = ids
    if limits.max_prompt_length is not None and len(prompt) > limits.max_prompt_length:
        prompt = _cut(prompt, limits.max_prompt_length, limits.prompt_truncation)
        report.truncated_prompts += 1
    m = limits.max_completion_length
    if m is not None and max(len(chosen), len(rejected)) > m:
        chosen, rejected = chosen[:m], rejected[:m]
        report.truncated_completions += 1
    if len(prompt) + max(len(chosen), len(rejected)) <= limits.max_length:
        return prompt, chosen, rejected
    if limits.overlong == "drop":
        report.too_long += 1
        return None
    # Keep at least one completion token: a pair with no completion left has no signal.
    if len(prompt) > limits.max_length - 1:
        prompt = _cut(prompt, limits.max_length - 1, limits.prompt_truncation)
    room = limits.max_length - len(prompt)
    report.fitted += 1
    return prompt, chosen[:room], rejected[:room]


def tokenize_rows(
    rows: list[PreferenceRow],
    tokenizer: Any,
    limits: Limits,
    source: str,
    *,
    raw_lengths: list[tuple[int, int, int]] | None = None,
    allow_empty: bool = False,
) -> tuple[list[TokenizedPair], DataReport]:
    """Tokenize, truncate and filter; raise :class:`DataError` if nothing usable is left (unless
    ``allow_empty``). ``raw_lengths`` collects each rendered pair's untruncated token counts."""
    report = DataReport(source, rows=len(rows), max_length=limits.max_length)
    pairs = []
    # Duplicates are kept (as TRL does): repeating a pair is a legitimate way to weight it, and
    # dropping rows silently would change the data; the report counts them so they are seen.
    # They are counted on the text: distinct words a tokenizer maps to <unk> are not duplicates.
    seen: set[str] = set()
    unk = getattr(tokenizer, "unk_token_id", None)
    for row in rows:
        if row.chosen == row.rejected:
            report.identical += 1
            report.dropped_indices.append(row.index)
            continue
        rendered = render_ids(row, tokenizer, source)
        if raw_lengths is not None:
            raw_lengths.append((len(rendered[0]), len(rendered[1]), len(rendered[2])))
        fitted = apply_limits(rendered, limits, report)
        if fitted is not None and fitted[1] == fitted[2]:  # identical once tokenized or cut
            report.identical += 1
            report.dropped_indices.append(row.index)
            continue
        if fitted is None:
            report.dropped_indices.append(row.index)
            continue
        key = json.dumps([row.prompt, row.chosen, row.rejected])
        report.duplicates += key in seen
        seen.add(key)
        pairs.append(TokenizedPair(row.index, *fitted))
        report.count([*fitted[0], *fitted[1], *fitted[2]], unk)
    report.close(len(pairs), allow_empty)
    return pairs, report
