"""Gold-task prompts: instruction templates x the shipped topic words, split once into train
and held-out test topics (see :mod:`gpo.gold`)."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from gpo.data.builtin import ASSETS
from gpo.data.formats import prompt_text

TOPICS_FILE = ASSETS / "topics.txt"

#: Every TEST_EVERY-th topic of the list (1-based) is held out for evaluation.
TEST_EVERY = 8

TEMPLATES: tuple[str, ...] = (
    "Write one sentence about {a}.",
    "Describe {a} in a few words.",
    "Give a short tip about {a}.",
    "Tell me one interesting fact about {a}.",
    "What is {a}? Answer briefly.",
    "Write a short caption for a photo of {a}.",
    "In one sentence, why might someone like {a}?",
    "Write a one-line story about {a}.",
    "Explain what {a} is to a child, briefly.",
    "Write a short, friendly sentence about the {t}.",
)

Split = Literal["train", "test"]

WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class GoldPrompt:
    text: str
    topic: str
    template: int
    split: Split


# --- prompts -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def all_topics() -> tuple[str, ...]:
    lines = TOPICS_FILE.read_text().splitlines()
    return tuple(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def topics(split: Split) -> tuple[str, ...]:
    """The train or held-out test topic words (a fixed partition of the shipped list)."""
    words = all_topics()
    test = split == "test"
    return tuple(w for i, w in enumerate(words) if ((i + 1) % TEST_EVERY == 0) == test)


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def render(template: int, topic: str) -> str:
    return TEMPLATES[template].format(a=_article(topic), t=topic)


def make_prompts(n: int, seed: int = 0, split: Split = "train") -> list[GoldPrompt]:
    """``n`` distinct prompts from the split's topics x templates, deterministic in ``seed``."""
    combos = [(t, k) for t in topics(split) for k in range(len(TEMPLATES))]
    if not 0 <= n <= len(combos):
        raise ValueError(f"the {split} split has {len(combos)} distinct prompts, asked for {n}")
    random.Random(f"gpo-gold-prompts-{seed}-{split}").shuffle(combos)
    return [GoldPrompt(render(k, t), t, k, split) for t, k in combos[:n]]


@lru_cache(maxsize=1)
def _template_patterns() -> tuple[re.Pattern[str], ...]:
    pats = []
    for tpl in TEMPLATES:
        parts = re.split(r"(\{a\}|\{t\})", tpl)
        rx = "".join(
            r"an? (?P<topic>[a-z]+)"
            if p == "{a}"
            else r"(?P<topic>[a-z]+)"
            if p == "{t}"
            else re.escape(p)
            for p in parts
        )
        pats.append(re.compile(rf"^\s*{rx}\s*$", re.IGNORECASE))
    return tuple(pats)


def extract_topic(prompt: str | Sequence[dict[str, str]]) -> str | None:
    """The topic word of a prompt: from the templates, else the last known topic word in it.

    Accepts the prompt text or a conversational message list (its last user turn is used).
    Returns None when no topic is found; :func:`gold_reward` then gives no topic credit.
    """
    text = prompt_text(prompt)
    for pat in _template_patterns():
        m = pat.match(text)
        if m:
            return m.group("topic").lower()
    known = set(all_topics())
    found = [w for w in (m.lower() for m in WORD.findall(text)) if _singular(w, known)]
    return _singular(found[-1], known) if found else None


def topic_forms(topic: str) -> set[str]:
    """The topic word and its regular plural forms."""
    forms = {topic, topic + "s", topic + "es"}
    if topic.endswith("y"):
        forms.add(topic[:-1] + "ies")
    if topic.endswith("f"):
        forms.add(topic[:-1] + "ves")
    if topic.endswith("fe"):
        forms.add(topic[:-2] + "ves")
    return forms


def _singular(word: str, known: set[str]) -> str | None:
    for t in (word, word[:-1], word[:-2], word[:-3] + "y", word[:-3] + "f", word[:-3] + "fe"):
        if t in known and word in topic_forms(t):
            return t
    return None
