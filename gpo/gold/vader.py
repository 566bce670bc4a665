"""The sentiment task's gold reward: r*(x, y) = VADER's compound score of the completion y.

VADER (Hutto & Gilbert 2014, the ``vaderSentiment`` package) is a published, rule-based
sentiment scorer with its own lexicon; nothing in it was written for gpo, which is the point of
the task (see :mod:`gpo.gold.sentiment`). The compound score lies in [-1, 1]; the prompt x is
not scored, only the completion.

``vaderSentiment`` is an optional dependency (``pip install 'gpo[sentiment]'``): without it,
anything that needs r* fails with one line naming the install command.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

#: T of the Bradley-Terry preference p*(a > b) = sigmoid((r*(a) - r*(b)) / T): a compound gap
#: of 0.1 gives p* = 0.60, 0.5 (neutral against clearly positive) 0.88, 1.0 gives 0.98.
TEMPERATURE = 0.25

INSTALL = "pip install vaderSentiment==3.3.2 (or: pip install 'gpo[sentiment]')"


class MissingDependency(ImportError, ValueError):
    """An optional dependency is not installed (a ValueError too: the CLI prints one line)."""


@lru_cache(maxsize=1)
def analyzer() -> Any:
    """VADER's analyzer, built once (it reads its lexicon from the installed package)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise MissingDependency(
            f"the sentiment task's gold reward is VADER, and vaderSentiment is not installed: "
            f"{INSTALL}"
        ) from None
    return SentimentIntensityAnalyzer()


def require_vader() -> None:
    """Fail now (one line, the install command) if VADER is missing, not after training."""
    analyzer()


def vader_reward(response: str) -> float:
    """r*(x, y): VADER's compound score of the response, in [-1, 1] (0 for an empty one)."""
    return float(analyzer().polarity_scores(response)["compound"])


def preference_probability(r_first: float, r_second: float, temperature: float) -> float:
    """sigmoid((r_first - r_second) / T), computed so that swapping the two gives exactly 1 - p.

    ``fl(a - b) = -fl(b - a)``, and for ``v < 0`` the value is ``1 - sigmoid(-v)``, which is
    exact for ``sigmoid(-v)`` in [0.5, 1]: so ``p(a, b) + p(b, a) == 1`` holds bit for bit.
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(
            f"the preference temperature T must be a positive number, got {temperature}"
        )
    v = (r_first - r_second) / temperature
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else 1.0 - 1.0 / (1.0 + math.exp(v))


def sentiment_probability(a: str, b: str, temperature: float = TEMPERATURE) -> float:
    """p*(a preferred to b) under VADER: sigmoid((r*(a) - r*(b)) / T)."""
    return preference_probability(vader_reward(a), vader_reward(b), temperature)
