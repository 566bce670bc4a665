"""Sentiment-task prompts: openings of movie reviews, from templates x made-up film titles
(x review aspects for two templates), split once by film into train and held-out test films
(see :mod:`gpo.gold.sentiment`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from gpo.data.builtin import ASSETS

FILMS_FILE = ASSETS / "sentiment_films.txt"

#: Every TEST_EVERY-th film of the list (1-based) is held out for evaluation.
TEST_EVERY = 8

#: Openings a review could continue either way: no word of them is in VADER's lexicon (tested),
#: so the completion alone sets the sentiment. They end without a space, so that the model's
#: first token carries it, as it would in running text.
TEMPLATES: tuple[str, ...] = (
    "I watched {film} last night, and",
    "{film} is a {genre} that",
    "Going into {film}, I expected",
    "The first thing you notice about {film} is",
    "My review of {film}:",
    "I saw {film} with my family this weekend. The",
    "After two hours of {film}, I",
    "{film}, the new {genre} everyone is talking about,",
    "I had heard a lot about {film} before I saw it, and",
    "When the lights came up after {film}, I",
    "If you are thinking about seeing {film},",
    "{film} tries to be a {genre}, and",
    "The {aspect} in {film}",
    "Let me tell you about the {aspect} of {film}. It",
    "What can I say about {film}? The",
    "I went to see {film} on opening night. The",
)

#: What a review talks about; filled into the templates that have ``{aspect}``. None is in
#: VADER's lexicon ("special effects" was, through "special" at +1.7: renamed in version 2).
ASPECTS: tuple[str, ...] = (
    "acting",
    "plot",
    "soundtrack",
    "cinematography",
    "dialogue",
    "ending",
    "pacing",
    "script",
    "lead performance",
    "visual effects",
    "direction",
    "casting",
    "costumes",
    "editing",
    "set design",
)

Split = Literal["train", "test"]


@dataclass(frozen=True)
class SentimentPrompt:
    text: str
    film: str
    genre: str
    template: int
    aspect: str | None
    split: Split


@lru_cache(maxsize=1)
def all_films() -> tuple[tuple[str, str], ...]:
    """``(title, genre)`` of every film in the shipped list, in file order."""
    films = []
    for line in FILMS_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            title, genre = line.split("\t")
            films.append((title.strip(), genre.strip()))
    return tuple(films)


def films(split: Split) -> tuple[tuple[str, str], ...]:
    """The train or held-out test films (a fixed partition of the shipped list)."""
    test = split == "test"
    return tuple(f for i, f in enumerate(all_films()) if ((i + 1) % TEST_EVERY == 0) == test)


def render(template: int, film: str, genre: str, aspect: str | None = None) -> str:
    return TEMPLATES[template].format(film=film, genre=genre, aspect=aspect)


def combinations(split: Split) -> list[tuple[str, str, int, str | None]]:
    """Every distinct ``(film, genre, template, aspect)`` of a split, in a fixed order."""
    out: list[tuple[str, str, int, str | None]] = []
    for film, genre in films(split):
        for k, tpl in enumerate(TEMPLATES):
            aspects: tuple[str | None, ...] = ASPECTS if "{aspect}" in tpl else (None,)
            out += [(film, genre, k, a) for a in aspects]
    return out


def make_sentiment_prompts(n: int, seed: int = 0, split: Split = "train") -> list[SentimentPrompt]:
    """``n`` distinct prompts of the split, drawn without replacement, deterministic in ``seed``."""
    combos = combinations(split)
    if not 0 <= n <= len(combos):
        raise ValueError(f"the {split} split has {len(combos)} distinct prompts, asked for {n}")
    random.Random(f"gpo-sentiment-prompts-{seed}-{split}").shuffle(combos)
    return [SentimentPrompt(render(k, f, g, a), f, g, k, a, split) for f, g, k, a in combos[:n]]
