"""Statistics of sampled completions that show reward hacking a sentiment scorer invites.

VADER scores "great great great!!!" higher than a sentence of measured praise: it rewards
repeated positive words and exclamation marks, and it gives an empty completion 0, above any
negative one. A frontier of reward against KL is read together with these numbers:

- ``mean_words``: whitespace-separated words per completion (short or empty completions);
- ``distinct_2``: distinct word bigrams / all word bigrams over the set of completions
  (Li et al. 2016's distinct-n at the corpus level, lower-cased): repetition within a
  completion and the same text for every prompt both lower it;
- ``exclamations``: exclamation marks per completion;
- ``frac_short``: the fraction of completions with fewer than ``SHORT_WORDS`` words.

For the built-in gold task, :func:`topic_words` counts what its reward invites: words built on
the prompt's topic word ("An egg is an egg consumed by an egg cartlery that consumes eggshell
eggsmithing": 5), which the reward's distinct-word and repeated-trigram terms do not see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpo.gold.prompts import WORD, extract_topic

#: A completion with fewer words than this counts as short (an empty one included).
SHORT_WORDS = 3


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams over all n-grams of ``texts`` (NaN when there are none)."""
    grams = [
        tuple(words[i : i + n])
        for words in (t.lower().split() for t in texts)
        for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else float("nan")


def completion_stats(texts: Sequence[str]) -> dict[str, Any]:
    """The numbers of the module docstring for a set of completions."""
    if not texts:
        return {"completions": 0}
    lengths = [len(t.split()) for t in texts]
    return {
        "completions": len(texts),
        "mean_words": sum(lengths) / len(texts),
        "distinct_2": distinct_n(texts, 2),
        "exclamations": sum(t.count("!") for t in texts) / len(texts),
        "frac_short": sum(n < SHORT_WORDS for n in lengths) / len(texts),
    }


def topic_words(prompt: str | Sequence[dict[str, str]], text: str) -> int:
    """Words of ``text`` that contain the gold prompt's topic word (0 without a topic)."""
    topic = extract_topic(prompt)
    if topic is None:
        return 0
    return sum(topic in w for w in (m.lower() for m in WORD.findall(text)))
