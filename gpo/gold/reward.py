"""The gold reward r*(x, y) and the gold preference of the built-in task (formula in
:mod:`gpo.gold`)."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gpo.gold.prompts import WORD, extract_topic, topic_forms

# Gold reward weights and length band (the formula: :mod:`gpo.gold`).
W_TOPIC = 2.0
W_LENGTH = 2.0
W_END = 1.0
W_DISTINCT = 2.0
W_REPEAT = 3.0
W_ASCII = 4.0
LENGTH_BAND = (8, 20)

Mode = Literal["bt", "deterministic"]

_ENDS = re.compile(r"[.!?][\"')\]]*$")


@dataclass(frozen=True)
class GoldFeatures:
    n_words: int
    on_topic: bool
    ends_sentence: bool
    distinct_ratio: float
    repeated_trigrams: float
    non_ascii: float


def gold_features(prompt: str | Sequence[dict[str, str]], response: str) -> GoldFeatures:
    """The measurable properties of a response that the gold reward combines."""
    topic = extract_topic(prompt)
    words = [w.lower() for w in WORD.findall(response)]
    n = len(words)
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    repeated = len(trigrams) - len(set(trigrams))
    bad_chars = sum(1 for c in response if ord(c) > 126 or (ord(c) < 32 and c not in "\n\t"))
    return GoldFeatures(
        n_words=n,
        on_topic=topic is not None and not topic_forms(topic).isdisjoint(words),
        ends_sentence=bool(_ENDS.search(response.strip())),
        distinct_ratio=len(set(words)) / n if n else 1.0,
        repeated_trigrams=repeated / len(trigrams) if trigrams else 0.0,
        non_ascii=bad_chars / len(response) if response else 0.0,
    )


def length_penalty(n_words: int) -> float:
    """``|log(n / clip(n, 8, 20))|``: 0 inside the band, grows with the log-distance outside."""
    lo, hi = LENGTH_BAND
    n = max(n_words, 1)
    return abs(math.log(n / min(max(n, lo), hi)))


def reward_from_features(f: GoldFeatures) -> float:
    return (
        W_TOPIC * f.on_topic
        - W_LENGTH * length_penalty(f.n_words)
        + W_END * f.ends_sentence
        - W_DISTINCT * (1.0 - f.distinct_ratio)
        - W_REPEAT * f.repeated_trigrams
        - W_ASCII * f.non_ascii
    )


def gold_reward(prompt: str | Sequence[dict[str, str]], response: str) -> float:
    """The gold reward r*(x, y) of the module docstring (prompt text or message list)."""
    return reward_from_features(gold_features(prompt, response))


def sigmoid(v: float) -> float:
    # Stable on both tails: never exponentiates a large positive number.
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def gold_probability(prompt: str | Sequence[dict[str, str]], a: str, b: str) -> float:
    """Bradley-Terry p*(a preferred to b) = sigmoid(r*(a) - r*(b))."""
    return sigmoid(gold_reward(prompt, a) - gold_reward(prompt, b))


def gold_prefers(
    prompt: str | Sequence[dict[str, str]],
    a: str,
    b: str,
    mode: Mode = "deterministic",
    rng: random.Random | None = None,
) -> float:
    """1.0 if the gold prefers ``a``, 0.0 if ``b``; 0.5 for an exact tie (deterministic mode).

    ``mode="bt"`` draws the outcome with probability :func:`gold_probability` from ``rng``.
    """
    if mode == "deterministic":
        ra, rb = gold_reward(prompt, a), gold_reward(prompt, b)
        return 1.0 if ra > rb else 0.0 if ra < rb else 0.5
    if mode == "bt":
        rng = rng if rng is not None else random.Random()
        return 1.0 if rng.random() < gold_probability(prompt, a, b) else 0.0
    raise ValueError(f"unknown gold mode {mode!r}; use 'deterministic' or 'bt'")
