"""From a config's data options to tokenized train and eval pairs."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from gpo.data.formats import NoSuchSplit, PreferenceRow, parse_rows
from gpo.data.sources import load_rows
from gpo.data.tokenize import DataReport, Limits, TokenizedPair, tokenize_rows


@dataclass
class PreparedData:
    train: list[TokenizedPair]
    eval: list[TokenizedPair]
    eval_rows: list[PreferenceRow]  # the validated eval rows (prompt text for judges)
    reports: list[DataReport]


def prepare_data(
    data: str,
    split: str,
    eval_data: str | None,
    eval_split: str | None,
    eval_fraction: float,
    tokenizer: Any,
    limits: Limits,
    seed: int,
) -> PreparedData:
    train_rows = parse_rows(load_rows(data, split), f"{data}[{split}]")
    eval_rows: list[PreferenceRow] | None = None
    eval_name = eval_data or data
    if eval_data is not None or eval_split is not None:
        try:
            raw = load_rows(eval_name, eval_split)
            eval_rows = parse_rows(raw, f"{eval_name}[{eval_split or 'train'}]")
        except NoSuchSplit:
            if eval_data is not None:
                raise
    if eval_rows is None:  # hold out a seeded fraction of the training rows
        order = list(range(len(train_rows)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, int(len(order) * eval_fraction))
        held = set(order[:n_eval])
        eval_rows = [r for i, r in enumerate(train_rows) if i in held]
        train_rows = [r for i, r in enumerate(train_rows) if i not in held]
    train, train_report = tokenize_rows(train_rows, tokenizer, limits, f"{data}[{split}]")
    evals, eval_report = tokenize_rows(eval_rows, tokenizer, limits, f"{eval_name}[eval]")
    kept = {p.index for p in evals}
    return PreparedData(
        train, evals, [r for r in eval_rows if r.index in kept], [train_report, eval_report]
    )
