"""The sentiment gold task: controlled sentiment generation, judged by VADER (DPO paper §6.1).

Why: every other gold win rate in gpo comes from a reward gpo's authors wrote
(:mod:`gpo.gold`). Here the reward is a published scorer that nothing in gpo was written for.

**Prompts.** Openings of movie reviews (:mod:`gpo.gold.sentiment_prompts`): 16 templates such
as "I watched {film} last night, and", filled with 200 made-up film titles and their genres
(``gpo/data/assets/sentiment_films.txt``) and, for two templates, one of 15 review aspects
("The {aspect} in {film}"): 44 prompts per film. Every 8th film of the list is a held-out *test*
film (25 films, 1100 prompts), the other 175 are *train* films (7700 prompts): test prompts are
never seen in training, not even their film. Prompts are drawn without replacement, seeded.

**Responses (mu).** Two continuations per prompt sampled from the embedded
SmolLM2-135M-Instruct, from the prompt text itself (TRL's standard format, no chat template:
the model continues the review), temperature 1 over the full vocabulary, at most 48 new tokens.
A pair with an empty or whitespace-only continuation is dropped (TRL rows need text), as is a
pair of identical ones; the counts are in the statistics.

**Gold reward.** r*(x, y) = VADER's compound score of the continuation y, in [-1, 1]
(:func:`gpo.gold.vader.vader_reward`; the prompt is not scored).

**Labels.** Bradley-Terry (default): "a preferred" with probability
p* = sigmoid((r*(a) - r*(b)) / T), T = 0.25 (:data:`gpo.gold.vader.TEMPERATURE`), drawn from an
RNG keyed by (seed, prompt); deterministic mode prefers the higher r* and drops ties.

**Judge.** ``--judge vader`` (:class:`gpo.eval.judges.VaderJudge`) scores a completion against
an opponent with the same p*; the final gold win rate of ``gpo train --data sentiment`` uses it.

**Reward hacking.** VADER rewards exclamation marks and repeated positive words and scores an
empty text 0: the statistics here and ``gpo report`` give mean length, distinct-2,
exclamation marks and short completions (:mod:`gpo.gold.text_stats`) next to the reward.

The shipped set ``gpo/data/assets/sentiment_pairs.jsonl.gz`` (settings, time and statistics in
its ``.meta.json``) is what ``gpo data build --task sentiment`` writes with the meta's settings.
Rows are TRL standard rows (``prompt``/``chosen``/``rejected`` strings) plus metadata.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from typing import Any, Literal

from gpo.gold.build import sample_pairs
from gpo.gold.sentiment_prompts import SentimentPrompt, make_sentiment_prompts
from gpo.gold.text_stats import completion_stats
from gpo.gold.vader import TEMPERATURE, preference_probability, vader_reward
from gpo.stats import mean_se

SENTIMENT_VERSION = 2  # 2: the aspect "special effects" -> "visual effects"

Mode = Literal["bt", "deterministic"]


def label_sentiment_pair(
    prompt: SentimentPrompt,
    a: str,
    b: str,
    mode: Mode = "bt",
    seed: int = 0,
    temperature: float = TEMPERATURE,
    finished: tuple[bool, bool] = (True, True),
) -> dict[str, Any] | None:
    """One standard preference row for the sampled pair (a, b); None if it is dropped.

    The BT draw comes from an RNG keyed by (seed, prompt text), so a pair's label does not
    depend on which other pairs are labelled with it.
    """
    if a == b or not a.strip() or not b.strip():
        return None
    ra, rb = vader_reward(a), vader_reward(b)
    if mode == "bt":
        u = random.Random(f"gpo-sentiment-label-{seed}-{prompt.text}").random()
        a_wins = u < preference_probability(ra, rb, temperature)
    elif mode == "deterministic":
        if ra == rb:
            return None
        a_wins = ra > rb
    else:
        raise ValueError(f"unknown label mode {mode!r}; use 'deterministic' or 'bt'")
    (c, rc, fc), (r, rr, fr) = ((a, ra, finished[0]), (b, rb, finished[1]))[:: 1 if a_wins else -1]
    return {
        "prompt": prompt.text,
        "chosen": c,
        "rejected": r,
        "chosen_finished": fc,  # ended with EOS rather than at max_new_tokens
        "rejected_finished": fr,
        "split": prompt.split,
        "film": prompt.film,
        "genre": prompt.genre,
        "template": prompt.template,
        "aspect": prompt.aspect,
        "gold_chosen": rc,
        "gold_rejected": rr,
        "chosen_index": 0 if a_wins else 1,  # which of the two samples was chosen
    }


def label_sentiment_pairs(
    prompts: Sequence[SentimentPrompt],
    pairs: Sequence[tuple[str, str]],
    mode: Mode = "bt",
    seed: int = 0,
    temperature: float = TEMPERATURE,
    finished: Sequence[tuple[bool, bool]] | None = None,
) -> list[dict[str, Any]]:
    """Rows for sampled pairs (see :func:`label_sentiment_pair`); deterministic in ``seed``."""
    fin = finished if finished is not None else [(True, True)] * len(pairs)
    rows = [
        label_sentiment_pair(p, a, b, mode, seed, temperature, f)
        for p, (a, b), f in zip(prompts, pairs, fin, strict=True)
    ]
    return [r for r in rows if r is not None]


def build_sentiment_dataset(
    model: Any,
    tokenizer: Any,
    n_prompts: int = 2000,
    seed: int = 0,
    n_test_prompts: int = 256,
    mode: Mode = "bt",
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    batch_size: int = 128,
    label_temperature: float = TEMPERATURE,
    show_progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Sample two continuations per prompt from ``model`` (mu) and label them with VADER.

    Returns the rows and the counts of dropped pairs (``empty``: a continuation with no text;
    ``identical``). Train prompts come first, then the held-out test prompts. Prompts are
    tokenized as ``gpo train`` tokenizes a standard row's prompt (``tokenizer(prompt)``), so
    mu's samples continue exactly the tokens the policy is trained on.
    """
    prompts = make_sentiment_prompts(n_prompts, seed, "train")
    prompts += make_sentiment_prompts(n_test_prompts, seed, "test")
    ids = [list(tokenizer(p.text)["input_ids"]) for p in prompts]
    pairs, finished = sample_pairs(
        model,
        tokenizer,
        ids,
        max_new_tokens,
        temperature,
        batch_size,
        seed,
        show_progress,
        desc="sentiment pairs: sampling",
    )
    empty = sum(not a.strip() or not b.strip() for a, b in pairs)
    dropped = {"empty": empty, "identical": sum(a == b and a.strip() != "" for a, b in pairs)}
    rows = label_sentiment_pairs(prompts, pairs, mode, seed, label_temperature, finished)
    return rows, dropped


def prompt_of(row: dict[str, Any]) -> SentimentPrompt:
    return SentimentPrompt(
        row["prompt"], row["film"], row["genre"], row["template"], row["aspect"], row["split"]
    )


def sampled_pair(row: dict[str, Any]) -> tuple[str, str]:
    """The two continuations of a row in their sampling order."""
    c, r = row["chosen"], row["rejected"]
    return (c, r) if row["chosen_index"] == 0 else (r, c)


def relabel_sentiment(
    rows: Sequence[dict[str, Any]],
    mode: Mode = "bt",
    seed: int = 0,
    temperature: float = TEMPERATURE,
) -> list[dict[str, Any]]:
    """Recompute r* and the labels of existing rows (another T, mode or seed, a new VADER).

    Gives the rows a fresh build with the same seed would give for these pairs.
    """
    fin = [
        (r["chosen_finished"], r["rejected_finished"])[:: 1 if r["chosen_index"] == 0 else -1]
        for r in rows
    ]
    return label_sentiment_pairs(
        [prompt_of(r) for r in rows],
        [sampled_pair(r) for r in rows],
        mode,
        seed,
        temperature,
        [(bool(a), bool(b)) for a, b in fin],
    )


def _distribution(values: Sequence[float]) -> dict[str, float]:
    qs = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "p10": qs[0],
        "median": statistics.median(values),
        "p90": qs[8],
        "frac_positive": sum(v >= 0.05 for v in values) / len(values),  # VADER's own cut-offs
        "frac_negative": sum(v <= -0.05 for v in values) / len(values),
    }


def summarize_sentiment(rows: Sequence[dict[str, Any]], temperature: float = TEMPERATURE) -> dict:
    """Counts, the r* distribution of chosen and rejected, label agreement and the completion
    statistics of :mod:`gpo.gold.text_stats`, per split."""
    out: dict[str, Any] = {"sentiment_version": SENTIMENT_VERSION, "temperature": temperature}
    for split in ("train", "test"):
        rs = [r for r in rows if r["split"] == split]
        if not rs:
            continue
        gaps = [r["gold_chosen"] - r["gold_rejected"] for r in rs]
        first, second = zip(*(sampled_pair(r) for r in rs), strict=True)
        # mu against itself under the judge's p*: 0.5 by symmetry, a check of sampling and r*.
        self_wr, self_se = mean_se(
            [
                preference_probability(vader_reward(a), vader_reward(b), temperature)
                for a, b in zip(first, second, strict=True)
            ]
        )
        completions = [r["chosen"] for r in rs] + [r["rejected"] for r in rs]
        out[split] = {
            "pairs": len(rs),
            "prompts": len({r["prompt"] for r in rs}),
            "films": len({r["film"] for r in rs}),
            "chosen": _distribution([r["gold_chosen"] for r in rs]),
            "rejected": _distribution([r["gold_rejected"] for r in rs]),
            "frac_chosen_higher": sum(g > 0 for g in gaps) / len(rs),  # label agreement with r*
            "frac_tied": sum(g == 0 for g in gaps) / len(rs),
            "frac_abs_gap_gt_0.5": sum(abs(g) > 0.5 for g in gaps) / len(rs),
            "self_win_rate": self_wr,
            "self_win_rate_se": self_se,
            "frac_finished": sum(r["chosen_finished"] + r["rejected_finished"] for r in rs)
            / (2 * len(rs)),
            "completions": completion_stats(completions),
        }
    return out


def format_sentiment_summary(summary: dict[str, Any]) -> str:
    lines = [f"sentiment task, BT temperature T = {summary['temperature']:g}"]
    for split in ("train", "test"):
        s = summary.get(split)
        if not s:
            continue
        c, r, t = s["chosen"], s["rejected"], s["completions"]
        lines.append(
            f"{split}: {s['pairs']} pairs over {s['prompts']} prompts ({s['films']} films); "
            f"VADER chosen mean {c['mean']:.3f} (median {c['median']:.3f}, positive "
            f"{c['frac_positive']:.1%}), rejected mean {r['mean']:.3f} (median "
            f"{r['median']:.3f}, positive {r['frac_positive']:.1%}); chosen has higher r* in "
            f"{s['frac_chosen_higher']:.1%}, tied {s['frac_tied']:.1%}; finished with EOS "
            f"{s['frac_finished']:.1%}; mean {t['mean_words']:.1f} words, distinct-2 "
            f"{t['distinct_2']:.3f}, {t['exclamations']:.2f} '!' per completion, short "
            f"{t['frac_short']:.1%}; VADER win rate of mu against itself "
            f"{s['self_win_rate']:.3f} +- {s['self_win_rate_se']:.3f}"
        )
    return "\n".join(lines)
