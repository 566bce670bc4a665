"""The built-in gold preference task: template prompts, SmolLM2 responses, a closed-form gold.

Why: the default ``gpo train`` needs preference data whose "truth" is known, so that a trained
policy can be scored (gold win rate against the reference) without a human or a judge model.

**Prompts.** :func:`make_prompts` fills short instruction templates (:data:`TEMPLATES`, e.g.
"Write one sentence about a cat.") with topic words from the shipped list ``assets/topics.txt``
(300 singular nouns). Topics are split once and for all: every 8th word of the list is a
held-out *test* topic (37), the rest are *train* topics (263), so test prompts are never seen
in training, not even their topic. Prompts are drawn without replacement from
topic x template, deterministically from a seed.

**Responses (mu).** Two completions per prompt are sampled from the embedded SmolLM2-135M-Instruct
through its chat template, temperature 1 over the full vocabulary, at most 48 new tokens
(:func:`build_gold_dataset`).

**Gold reward** r*(x, y), computed from the prompt text and the response text only
(:func:`gold_reward`), with ``words`` = the maximal runs of ASCII letters in the response
(lower-cased; "it's" is two words) and n = len(words)::

    r* = W_TOPIC * [response mentions the prompt's topic word (or its plural)]
       - W_LENGTH * |log(n / clip(n, 8, 20))|        # 0 inside 8..20 words, log-distance outside
       + W_END * [response ends with . ! or ? (optionally then a quote or bracket)]
       - W_DISTINCT * (1 - distinct words / n)       # lexical repetition
       - W_REPEAT * (fraction of word 3-grams that repeat an earlier 3-gram)
       - W_ASCII * (fraction of non-ASCII or control characters)

with W_TOPIC = 2, W_LENGTH = 2, W_END = 1, W_DISTINCT = 2, W_REPEAT = 3, W_ASCII = 4 (an empty
response counts as n = 1). No single token scores well: it cannot mention the topic,
have 8-20 words and end a sentence at once; repeating the topic word is caught by the repetition
terms. The best score, W_TOPIC + W_END = 3, needs a complete, on-topic sentence of 8-20 words.

**Labels.** For a pair (a, b): Bradley-Terry (default) draws "a preferred" with probability
p* = sigmoid(r*(a) - r*(b)) from a seeded RNG; deterministic mode prefers the higher r* and
drops exact ties. Pairs with identical responses are dropped in both modes.

**Win rate.** :func:`gold_win_rate` scores responses against opponents on the same prompts with
the deterministic gold (win 1, tie 0.5, loss 0) and returns the mean and its standard error
``std(ddof=1) / sqrt(n)``; ``mode="bt"`` averages p* instead.

The shipped set ``assets/gold_pairs.jsonl.gz`` (2000 train pairs, 200 held-out test pairs, seed
0, BT labels; settings and statistics in ``assets/gold_pairs.meta.json``) is what
``gpo data build-gold`` writes with its defaults; elsewhere the bytes may differ, since float
rounding on other hardware or thread counts changes sampled tokens. Rows are in TRL's
conversational format plus metadata, see :func:`label_pair`.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

ASSETS = Path(__file__).parent / "assets"
TOPICS_FILE = ASSETS / "topics.txt"
#: The shipped pre-generated preference pairs (train and test split in one file).
BUILTIN_GOLD_PATH = ASSETS / "gold_pairs.jsonl.gz"
#: Generation settings and summary statistics of the shipped file.
BUILTIN_GOLD_META_PATH = ASSETS / "gold_pairs.meta.json"
GOLD_VERSION = 1

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

# Gold reward weights and length band (see the module docstring).
W_TOPIC = 2.0
W_LENGTH = 2.0
W_END = 1.0
W_DISTINCT = 2.0
W_REPEAT = 3.0
W_ASCII = 4.0
LENGTH_BAND = (8, 20)

Split = Literal["train", "test"]
Mode = Literal["bt", "deterministic"]

_WORD = re.compile(r"[A-Za-z]+")
_ENDS = re.compile(r"[.!?][\"')\]]*$")


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
    text = _prompt_text(prompt)
    for pat in _template_patterns():
        m = pat.match(text)
        if m:
            return m.group("topic").lower()
    known = set(all_topics())
    found = [w for w in (m.lower() for m in _WORD.findall(text)) if _singular(w, known)]
    return _singular(found[-1], known) if found else None


def _prompt_text(prompt: str | Sequence[dict[str, str]]) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users:
        raise ValueError("conversational prompt has no user message")
    return users[-1]


def _forms(topic: str) -> set[str]:
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
        if t in known and word in _forms(t):
            return t
    return None


# --- the gold reward -------------------------------------------------------------------------


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
    words = [w.lower() for w in _WORD.findall(response)]
    n = len(words)
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    repeated = len(trigrams) - len(set(trigrams))
    bad_chars = sum(1 for c in response if ord(c) > 126 or (ord(c) < 32 and c not in "\n\t"))
    return GoldFeatures(
        n_words=n,
        on_topic=topic is not None and not _forms(topic).isdisjoint(words),
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


def _sigmoid(v: float) -> float:
    # Stable on both tails: never exponentiates a large positive number.
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def gold_probability(prompt: str | Sequence[dict[str, str]], a: str, b: str) -> float:
    """Bradley-Terry p*(a preferred to b) = sigmoid(r*(a) - r*(b))."""
    return _sigmoid(gold_reward(prompt, a) - gold_reward(prompt, b))


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


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error ``std(ddof=1) / sqrt(n)`` (SE is nan for fewer than 2 values)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def gold_win_rate(
    prompts: Sequence[str | Sequence[dict[str, str]]],
    responses: Sequence[str],
    opponents: Sequence[str],
    mode: Literal["deterministic", "bt"] = "deterministic",
) -> tuple[float, float]:
    """(win rate, standard error) of ``responses`` against ``opponents`` on the same prompts.

    Deterministic (default): each comparison scores 1 / 0.5 / 0 (win / tie / loss).
    ``mode="bt"``: each comparison scores its Bradley-Terry probability p*.
    """
    if not len(prompts) == len(responses) == len(opponents):
        raise ValueError("prompts, responses and opponents must have the same length")
    if mode == "bt":
        scores = [gold_probability(*t) for t in zip(prompts, responses, opponents, strict=True)]
    else:
        scores = [gold_prefers(*t) for t in zip(prompts, responses, opponents, strict=True)]
    return mean_and_se(scores)


# --- building and loading the dataset --------------------------------------------------------


def label_pair(
    prompt: GoldPrompt,
    a: str,
    b: str,
    mode: Mode,
    seed: int = 0,
    finished: tuple[bool, bool] = (True, True),
) -> dict[str, Any] | None:
    """One conversational preference row for the sampled pair (a, b); None if it is dropped.

    The BT draw comes from an RNG keyed by (seed, prompt text), so a pair's label does not
    depend on which other pairs are labelled with it.
    """
    u = random.Random(f"gpo-gold-label-{seed}-{prompt.text}").random()
    ra, rb = gold_reward(prompt.text, a), gold_reward(prompt.text, b)
    if a == b or (mode == "deterministic" and ra == rb):
        return None
    if mode == "bt":
        a_wins = u < _sigmoid(ra - rb)
    elif mode == "deterministic":
        a_wins = ra > rb
    else:
        raise ValueError(f"unknown gold mode {mode!r}; use 'deterministic' or 'bt'")
    (c, rc, fc), (r, rr, fr) = ((a, ra, finished[0]), (b, rb, finished[1]))[:: 1 if a_wins else -1]
    return {
        "prompt": [{"role": "user", "content": prompt.text}],
        "chosen": [{"role": "assistant", "content": c}],
        "rejected": [{"role": "assistant", "content": r}],
        "split": prompt.split,
        "topic": prompt.topic,
        "template": prompt.template,
        "gold_chosen": round(rc, 6),
        "gold_rejected": round(rr, 6),
        "chosen_index": 0 if a_wins else 1,  # which of the two samples was chosen
        "chosen_finished": fc,  # ended with EOS rather than at max_new_tokens
        "rejected_finished": fr,
    }


def label_pairs(
    prompts: Sequence[GoldPrompt],
    pairs: Sequence[tuple[str, str]],
    mode: Mode = "bt",
    seed: int = 0,
    finished: Sequence[tuple[bool, bool]] | None = None,
) -> list[dict[str, Any]]:
    """Rows for sampled pairs (see :func:`label_pair`); deterministic in ``seed``."""
    fin = finished if finished is not None else [(True, True)] * len(pairs)
    rows = [
        label_pair(p, a, b, mode, seed, f) for p, (a, b), f in zip(prompts, pairs, fin, strict=True)
    ]
    return [r for r in rows if r is not None]


def build_gold_dataset(
    model: Any,
    tokenizer: Any,
    n_prompts: int = 2000,
    seed: int = 0,
    n_test_prompts: int = 200,
    mode: Mode = "bt",
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    batch_size: int = 32,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """Sample two responses per prompt from ``model`` (mu) and label them with the gold.

    Train prompts come first, then the held-out test prompts; both in the same row format.
    """
    from gpo.sampling import encode_chat_prompts, sample

    prompts = make_prompts(n_prompts, seed, "train") + make_prompts(n_test_prompts, seed, "test")
    ids = encode_chat_prompts(tokenizer, [p.text for p in prompts])
    s = sample(
        model,
        tokenizer,
        ids,
        num_samples=2,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        batch_size=batch_size,
        seed=seed,
        show_progress=show_progress,
    )
    pairs = [(s.text[2 * i], s.text[2 * i + 1]) for i in range(len(prompts))]
    finished = [(s.finished[2 * i], s.finished[2 * i + 1]) for i in range(len(prompts))]
    return label_pairs(prompts, pairs, mode, seed, finished)


def prompt_of(row: dict[str, Any]) -> GoldPrompt:
    return GoldPrompt(_prompt_text(row["prompt"]), row["topic"], row["template"], row["split"])


def sampled_pair(row: dict[str, Any]) -> tuple[str, str]:
    """The two responses of a row in their sampling order."""
    c, r = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
    return (c, r) if row["chosen_index"] == 0 else (r, c)


def relabel(
    rows: Sequence[dict[str, Any]], mode: Mode = "bt", seed: int = 0
) -> list[dict[str, Any]]:
    """Recompute r* and labels of existing rows (e.g. after a change of the gold reward).

    Gives the rows a fresh build with the same seed would give for these pairs.
    """
    prompts = [prompt_of(r) for r in rows]
    pairs = [sampled_pair(r) for r in rows]
    fin = [
        (r["chosen_finished"], r["rejected_finished"])[:: 1 if r["chosen_index"] == 0 else -1]
        for r in rows
    ]
    return label_pairs(prompts, pairs, mode, seed, [tuple(f) for f in fin])


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write rows as JSON lines (gzip if the name ends in .gz), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # mtime=0: the same rows give the same bytes.
    raw = open(tmp, "wb")  # noqa: SIM115 - closed below, after the gzip wrapper
    try:
        f = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.suffix == ".gz" else raw
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
        if f is not raw:
            f.close()
    finally:
        raw.close()
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_builtin_gold(split: Split | None = "train") -> list[dict[str, Any]]:
    """The shipped pairs of one split (``None``: all rows)."""
    if not BUILTIN_GOLD_PATH.is_file():
        raise FileNotFoundError(
            f"{BUILTIN_GOLD_PATH} is missing; regenerate it with `gpo data build-gold --out FILE`"
        )
    rows = read_jsonl(BUILTIN_GOLD_PATH)
    return rows if split is None else [r for r in rows if r["split"] == split]


def builtin_test_prompts() -> list[str]:
    """The held-out prompt texts of the shipped data, in file order, without duplicates."""
    rows = load_builtin_gold("test")
    return list(dict.fromkeys(_prompt_text(r["prompt"]) for r in rows))


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts and r* statistics of labelled rows (per split)."""
    out: dict[str, Any] = {"gold_version": GOLD_VERSION}
    for split in ("train", "test"):
        rs = [r for r in rows if r["split"] == split]
        if not rs:
            continue
        rewards = [r["gold_chosen"] for r in rs] + [r["gold_rejected"] for r in rs]
        gaps = [r["gold_chosen"] - r["gold_rejected"] for r in rs]
        mean, _ = mean_and_se(rewards)
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in rewards) / max(len(rewards) - 1, 1))
        first, second = zip(*(sampled_pair(r) for r in rs), strict=True)
        self_wr, self_se = gold_win_rate([r["prompt"] for r in rs], first, second)
        out[split] = {
            "pairs": len(rs),
            "prompts": len({_prompt_text(r["prompt"]) for r in rs}),
            "reward_mean": mean,
            "reward_std": std,
            "reward_min": min(rewards),
            "reward_max": max(rewards),
            "frac_chosen_higher": sum(g > 0 for g in gaps) / len(rs),
            "frac_abs_gap_gt_0.5": sum(abs(g) > 0.5 for g in gaps) / len(rs),
            "frac_abs_gap_gt_1": sum(abs(g) > 1.0 for g in gaps) / len(rs),
            # mu against itself (first vs second sample): ~0.5 by symmetry, a sanity check.
            "self_win_rate": self_wr,
            "self_win_rate_se": self_se,
            "frac_finished": sum(r["chosen_finished"] + r["rejected_finished"] for r in rs)
            / (2 * len(rs)),
        }
    return out


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    for split in ("train", "test"):
        s = summary.get(split)
        if s:
            lines.append(
                f"{split}: {s['pairs']} pairs over {s['prompts']} prompts; "
                f"r* mean {s['reward_mean']:.3f} std {s['reward_std']:.3f} "
                f"[{s['reward_min']:.2f}, {s['reward_max']:.2f}]; chosen has higher r* in "
                f"{s['frac_chosen_higher']:.1%}; |gap| > 1 in {s['frac_abs_gap_gt_1']:.1%}; "
                f"finished with EOS {s['frac_finished']:.1%}; gold win rate of mu against "
                f"itself {s['self_win_rate']:.3f} +- {s['self_win_rate_se']:.3f}"
            )
    return "\n".join(lines)
