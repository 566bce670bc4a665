"""Preference data: sources, TRL formats, tokenization, batching."""

from gpo.data.collate import PairBatch, SeqBatch, collate_pairs, collate_sequences
from gpo.data.formats import DataError, PreferenceRow, parse_rows
from gpo.data.sources import load_rows
from gpo.data.tokenize import DataReport, Limits, TokenizedPair, tokenize_rows

__all__ = [
    "DataError",
    "DataReport",
    "Limits",
    "PairBatch",
    "PreferenceRow",
    "SeqBatch",
    "TokenizedPair",
    "collate_pairs",
    "collate_sequences",
    "load_rows",
    "parse_rows",
    "tokenize_rows",
]
