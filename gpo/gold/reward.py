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
W_TOPIC_REPEAT = 1.0  # version 2 only
LENGTH_BAND = (8, 20)
#: Versions of the reward: 1 (the shipped gold pairs' labels), 2 (1 plus the topic-repetition
#: penalty, after a 200-step run at beta 0.01 learned "A jacket jacket is ..."; docs/results.md).
VERSIONS = (1, 2)

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
    topic_mentions: int = 0  # words that are the topic word or its plural


def gold_features(prompt: str | Sequence[dict[str, str]], response: str) -> GoldFeatures:
    """The measurable properties of a response that the gold reward combines."""
    topic = extract_topic(prompt)
    words = [w.lower() for w in WORD.findall(response)]
    forms = topic_forms(topic) if topic is not None else set()
    mentions = sum(w in forms for w in words)
    n = len(words)
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    repeated = len(trigrams) - len(set(trigrams))
    bad_chars = sum(1 for c in response if ord(c) > 126 or (ord(c) < 32 and c not in "\n\t"))
    return GoldFeatures(
        n_words=n,
        on_topic=mentions > 0,
        ends_sentence=bool(_ENDS.search(response.strip())),
        distinct_ratio=len(set(words)) / n if n else 1.0,
        repeated_trigrams=repeated / len(trigrams) if trigrams else 0.0,
        non_ascii=bad_chars / len(response) if response else 0.0,
        topic_mentions=mentions,
    )


def length_penalty(n_words: int) -> float:
    """``|log(n / clip(n, 8, 20))|``: 0 inside the band, grows with the log-distance outside."""
    lo, hi = LENGTH_BAND
    n = max(n_words, 1)
    return abs(math.log(n / min(max(n, lo), hi)))


def check_version(version: int) -> None:
    if version not in VERSIONS:
        raise ValueError(f"gold reward version must be one of {VERSIONS}, got {version!r}")


def reward_from_features(f: GoldFeatures, version: int = 1) -> float:
    check_version(version)
    base = (
        W_TOPIC * f.on_topic
        - W_LENGTH * length_penalty(f.n_words)
        + W_END * f.ends_sentence
        - W_DISTINCT * (1.0 - f.distinct_ratio)
        - W_REPEAT * f.repeated_trigrams
        - W_ASCII * f.non_ascii
    )
    if version == 1:
        return base
    return base - W_TOPIC_REPEAT * max(0, f.topic_mentions - 1)


def gold_reward(prompt: str | Sequence[dict[str, str]], response: str, version: int = 1) -> float:
    """The gold reward r*(x, y) of :mod:`gpo.gold` (prompt text or message list), of a version."""
    return reward_from_features(gold_features(prompt, response), version)


def sigmoid(v: float) -> float:
    # Stable on both tails: never exponentiates a large positive number.
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def gold_probability(
    prompt: str | Sequence[dict[str, str]], a: str, b: str, version: int = 1
) -> float:
    """Bradley-Terry p*(a preferred to b) = sigmoid(r*(a) - r*(b))."""
    return sigmoid(gold_reward(prompt, a, version) - gold_reward(prompt, b, version))


def gold_prefers(
    prompt: str | Sequence[dict[str, str]],
    a: str,
    b: str,
    mode: Mode = "deterministic",
    rng: random.Random | None = None,
    version: int = 1,
) -> float:
    """1.0 if the gold prefers ``a``, 0.0 if ``b``; 0.5 for an exact tie (deterministic mode).

    ``mode="bt"`` draws the outcome with probability :func:`gold_probability` from ``rng``.
    """
    if mode == "deterministic":
        ra, rb = gold_reward(prompt, a, version), gold_reward(prompt, b, version)
        return 1.0 if ra > rb else 0.0 if ra < rb else 0.5
    if mode == "bt":
        rng = rng if rng is not None else random.Random()
        return 1.0 if rng.random() < gold_probability(prompt, a, b, version) else 0.0
    raise ValueError(f"unknown gold mode {mode!r}; use 'deterministic' or 'bt'")
