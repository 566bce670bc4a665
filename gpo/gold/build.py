"""Building the gold preference data: sample two responses per prompt from mu, label them with
the gold; relabel existing rows; summary statistics (see :mod:`gpo.gold`)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from gpo.data.formats import prompt_text
from gpo.gold.prompts import GoldPrompt, make_prompts
from gpo.gold.reward import Mode, gold_prefers, gold_reward, sigmoid
from gpo.stats import mean_se


def label_pair(
    prompt: GoldPrompt,
    a: str,
    b: str,
    mode: Mode,
    seed: int = 0,
    finished: tuple[bool, bool] = (True, True),
    version: int = 1,
) -> dict[str, Any] | None:
    """One conversational preference row for the sampled pair (a, b); None if it is dropped.

    The BT draw comes from an RNG keyed by (seed, prompt text), so a pair's label does not
    depend on which other pairs are labelled with it.
    """
    u = random.Random(f"gpo-gold-label-{seed}-{prompt.text}").random()
    ra, rb = gold_reward(prompt.text, a, version), gold_reward(prompt.text, b, version)
    if a == b or (mode == "deterministic" and ra == rb):
        return None
    if mode == "bt":
        a_wins = u < sigmoid(ra - rb)
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
    version: int = 1,
) -> list[dict[str, Any]]:
    """Rows for sampled pairs (see :func:`label_pair`); deterministic in ``seed``."""
    fin = finished if finished is not None else [(True, True)] * len(pairs)
    rows = [
        label_pair(p, a, b, mode, seed, f, version)
        for p, (a, b), f in zip(prompts, pairs, fin, strict=True)
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
    version: int = 1,
) -> list[dict[str, Any]]:
    """Sample two responses per prompt from ``model`` (mu) and label them with the gold.

    Train prompts come first, then the held-out test prompts; both in the same row format.
    """
    from gpo.models.sampling import encode_chat_prompts

    prompts = make_prompts(n_prompts, seed, "train") + make_prompts(n_test_prompts, seed, "test")
    ids = encode_chat_prompts(tokenizer, [p.text for p in prompts])
    pairs, finished = sample_pairs(
        model, tokenizer, ids, max_new_tokens, temperature, batch_size, seed, show_progress
    )
    return label_pairs(prompts, pairs, mode, seed, finished, version)


def sample_pairs(
    model: Any,
    tokenizer: Any,
    ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    seed: int,
    show_progress: bool = False,
    desc: str = "sampling",
) -> tuple[list[tuple[str, str]], list[tuple[bool, bool]]]:
    """Two completions of mu per prompt, in prompt order, and whether each ended with EOS."""
    from gpo.models.sampling import sample

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
        desc=desc,
    )
    pairs = [(s.text[2 * i], s.text[2 * i + 1]) for i in range(len(ids))]
    finished = [(s.finished[2 * i], s.finished[2 * i + 1]) for i in range(len(ids))]
    return pairs, finished


def prompt_of(row: dict[str, Any]) -> GoldPrompt:
    return GoldPrompt(prompt_text(row["prompt"]), row["topic"], row["template"], row["split"])


def sampled_pair(row: dict[str, Any]) -> tuple[str, str]:
    """The two responses of a row in their sampling order."""
    c, r = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
    return (c, r) if row["chosen_index"] == 0 else (r, c)


def relabel(
    rows: Sequence[dict[str, Any]], mode: Mode = "bt", seed: int = 0, version: int = 1
) -> list[dict[str, Any]]:
    """Recompute r* and labels of existing rows with a version of the gold reward.

    Gives the rows a fresh build with the same seed would give for these pairs. A pair's BT draw
    depends only on (seed, prompt), so a label changes only where the reward gap does.
    """
    prompts = [prompt_of(r) for r in rows]
    pairs = [sampled_pair(r) for r in rows]
    fin = [
        (r["chosen_finished"], r["rejected_finished"])[:: 1 if r["chosen_index"] == 0 else -1]
        for r in rows
    ]
    return label_pairs(prompts, pairs, mode, seed, [tuple(f) for f in fin], version)


def summarize(rows: Sequence[dict[str, Any]], version: int = 1) -> dict[str, Any]:
    """Counts and r* statistics of labelled rows (per split), under a version of the gold."""
    out: dict[str, Any] = {"gold_version": version}
    for split in ("train", "test"):
        rs = [r for r in rows if r["split"] == split]
        if not rs:
            continue
        rewards = [r["gold_chosen"] for r in rs] + [r["gold_rejected"] for r in rs]
        gaps = [r["gold_chosen"] - r["gold_rejected"] for r in rs]
        mean = math.fsum(rewards) / len(rewards)
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in rewards) / max(len(rewards) - 1, 1))
        first, second = zip(*(sampled_pair(r) for r in rs), strict=True)
        # mu against itself (first vs second sample) under the deterministic gold: ~0.5 by
        # symmetry, a sanity check of the sampling and the labels.
        self_wr, self_se = mean_se(
            [
                gold_prefers(r["prompt"], a, b, version=version)
                for r, a, b in zip(rs, first, second, strict=True)
            ]
        )
        out[split] = {
            "pairs": len(rs),
            "prompts": len({prompt_text(r["prompt"]) for r in rs}),
            "reward_mean": mean,
            "reward_std": std,
            "reward_min": min(rewards),
            "reward_max": max(rewards),
            "frac_chosen_higher": sum(g > 0 for g in gaps) / len(rs),
            "frac_abs_gap_gt_0.5": sum(abs(g) > 0.5 for g in gaps) / len(rs),
            "frac_abs_gap_gt_1": sum(abs(g) > 1.0 for g in gaps) / len(rs),
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
