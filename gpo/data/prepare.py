"""From a config's data options to tokenized train and eval pairs.

The eval set is, in order: ``eval_data`` (its ``eval_split``; a source with no named splits, such
as a single ``.jsonl`` file, is its own eval set whatever ``eval_split`` says), else ``data``'s
``eval_split`` when it has one, else a seeded ``eval_fraction`` of the training rows held out
(``eval_fraction == 0``: no eval set, an empty ``eval`` list).

With ``online``, a source may be prompt-only (:mod:`gpo.data.prompts`): its pairs have no
responses, and ``eval_pairs`` is false when the held-out rows are such (no pair metrics).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from gpo.data.formats import DataError, NoSplits, NoSuchSplit, PreferenceRow
from gpo.data.prompts import parse_source, tokenize_source
from gpo.data.sources import load_rows
from gpo.data.tokenize import DataReport, Limits, TokenizedPair


@dataclass
class PreparedData:
    train: list[TokenizedPair]
    eval: list[TokenizedPair]  # empty when there is no eval set (eval_fraction 0)
    eval_rows: list[PreferenceRow]  # the validated eval rows (prompt text for judges)
    reports: list[DataReport]
    #: The validated training rows kept, in ``train``'s order (prompts for online sampling).
    train_rows: list[PreferenceRow] = field(default_factory=list)
    #: Whether the held-out rows are pairs (prompt-only rows, ``online``: no pair metrics).
    eval_pairs: bool = True


Parsed = tuple[list[PreferenceRow], bool]  # rows, prompt-only


def _eval_rows(
    data: str, eval_data: str | None, eval_split: str | None, online: bool
) -> Parsed | None:
    """The rows of the named eval set, or ``None`` when ``data`` has no eval split."""
    if eval_data is None and eval_split is None:
        return None
    name = eval_data or data
    try:
        return parse_source(load_rows(name, eval_split), f"{name}[{eval_split or 'train'}]", online)
    except NoSplits:
        if eval_data is None:
            return None
        return parse_source(load_rows(name, None), name, online)  # a lone file: its own eval set
    except NoSuchSplit:
        if eval_data is not None:
            raise
        return None


def _hold_out(
    rows: list[PreferenceRow], fraction: float, seed: int, label: str
) -> tuple[list[PreferenceRow], list[PreferenceRow]]:
    """``(train, eval)``: a seeded ``fraction`` of ``rows`` (at least one) held out."""
    if fraction == 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(order) * fraction))
    if n_eval >= len(rows):  # only a one-row source, as fraction < 1
        raise DataError(
            f"{label}: {len(rows)} row: all held out for eval; give --eval-data or more rows "
            "(or set eval_fraction 0 to train without an eval set)"
        )
    held = set(order[:n_eval])
    return [r for r in rows if r.index not in held], [r for r in rows if r.index in held]


def prepare_data(
    data: str,
    split: str,
    eval_data: str | None,
    eval_split: str | None,
    eval_fraction: float,
    tokenizer: Any,
    limits: Limits,
    seed: int,
    online: bool = False,
) -> PreparedData:
    label = f"{data}[{split}]"
    train_rows, prompt_only = parse_source(load_rows(data, split), label, online)
    named = _eval_rows(data, eval_data, eval_split, online)
    if named is None:
        train_rows, eval_rows = _hold_out(train_rows, eval_fraction, seed, label)
        eval_prompt_only = prompt_only
    else:
        eval_rows, eval_prompt_only = named
    train, train_report = tokenize_source(train_rows, prompt_only, tokenizer, limits, label)
    kept_train = {p.index for p in train}
    rows = [r for r in train_rows if r.index in kept_train]
    if not eval_rows:
        return PreparedData(train, [], [], [train_report], rows)
    source = f"{eval_data or data}[eval]"
    evals, eval_report = tokenize_source(eval_rows, eval_prompt_only, tokenizer, limits, source)
    kept = {p.index for p in evals}
    held = [r for r in eval_rows if r.index in kept]
    reports = [train_report, eval_report]
    return PreparedData(train, evals, held, reports, rows, not eval_prompt_only)
