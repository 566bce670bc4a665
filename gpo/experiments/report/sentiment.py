"""The sentiment task's part of `gpo report`: mean gold reward on held-out prompts against KL
(the DPO paper's Fig. 2 left), the frontier per loss, and the reward-hacking numbers beside it.

Only for runs on the sentiment task (``data: sentiment`` or the ``vader`` judge). Every eval
that judged a win rate saved the policy's completions on the held-out prompts
(``samples/step-NNNNNN.jsonl``); their mean VADER compound score is r* at that checkpoint,
paired with the eval's on-policy KL. pi_ref's point (KL 0) is the mean over its completions on
the same prompts (the opponent column), one per seed. Beside the reward, per checkpoint:
mean words, distinct-2, exclamation marks per completion and short completions
(:mod:`gpo.gold.text_stats`), since VADER can be gamed by "great great great!!!".
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from gpo.eval.judges import parse_judge_spec
from gpo.eval.win_rate import step_samples_path
from gpo.experiments.report.collect import RunData, finite
from gpo.gold.text_stats import completion_stats
from gpo.gold.vader import vader_reward
from gpo.io import read_jsonl
from gpo.stats import mean_se

#: Checkpoints whose samples the write-up shows: at these quantiles of the KL.
SAMPLE_QUANTILES = {"low": 0.1, "middle": 0.5, "high": 0.9}
SAMPLES_SHOWN = 3


def on_sentiment_task(runs: list[RunData]) -> bool:
    return any(
        r.config.get("data") == "sentiment"
        or parse_judge_spec(str(r.config.get("judge", "gold")))[0] == "vader"
        for r in runs
    )


def _scored(texts: list[str]) -> dict[str, Any]:
    reward, se = mean_se([vader_reward(t) for t in texts])
    return {"reward": reward, "reward_se": se, **completion_stats(texts)}


def _points(runs: list[RunData]) -> list[dict[str, Any]]:
    """One point per checkpoint with both an on-policy KL and saved samples."""
    points = []
    for r in runs:
        for rec in r.evals:
            path = step_samples_path(r.dir, int(rec["step"]))
            if not finite(rec.get("eval/kl")) or not path.is_file():
                continue
            rows = read_jsonl(path)
            points.append(
                {
                    "run": r.name,
                    "loss": r.key[0],
                    "beta": r.key[1],
                    "seed": r.config.get("seed"),
                    "step": rec["step"],
                    "kl": rec["eval/kl"],
                    "kl_se": rec.get("eval/kl_se"),
                    **_scored([x["policy"] for x in rows]),
                }
            )
    return points


def _reference(runs: list[RunData]) -> dict[str, Any] | None:
    """pi_ref's completions (the opponent of runs judged against it), scored once per seed."""
    per_seed: dict[str, dict[str, Any]] = {}
    for r in runs:
        seed = str(r.config.get("seed"))
        files = sorted((r.dir / "samples").glob("step-*.jsonl"))
        if r.config.get("opponent") or seed in per_seed or not files:
            continue
        per_seed[seed] = _scored([x["opponent"] for x in read_jsonl(files[0])])
    if not per_seed:
        return None
    keys = ("reward", "mean_words", "distinct_2", "exclamations", "frac_short")
    out = {k: statistics.fmean(s[k] for s in per_seed.values()) for k in keys}
    return {**out, "kl": 0.0, "by_seed": per_seed}


def frontier(points: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """The upper envelope: checkpoints with a higher reward than every one at a lower KL."""
    best, out = float("-inf"), []
    for p in sorted(points, key=lambda p: (p["kl"], -p["reward"])):
        if p["reward"] > best:
            best = p["reward"]
            out.append((p["kl"], p["reward"]))
    return out


def _finals(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (loss, beta): the last checkpoint of each seed's run, and the mean over seeds."""
    last: dict[tuple[str, float], dict[str, dict[str, Any]]] = defaultdict(dict)
    for p in points:  # in step order within a run
        last[(p["loss"], p["beta"])][p["run"]] = p
    out = []
    for (loss, beta), by_run in last.items():
        ps = list(by_run.values())
        row = {"loss": loss, "beta": beta, "seeds": [p["seed"] for p in ps]}
        for k in ("kl", "reward", "mean_words", "distinct_2", "exclamations", "frac_short"):
            row[k] = statistics.fmean(p[k] for p in ps)
        row["reward_by_seed"] = [p["reward"] for p in ps]
        out.append(row)
    return out


def _samples(runs: list[RunData], points: list[dict[str, Any]]) -> dict[str, Any]:
    """A few completions at the checkpoints nearest the low, middle and high KL quantiles."""
    if not points:
        return {}
    kls = sorted(p["kl"] for p in points)
    by_name = {r.name: r for r in runs}
    out = {}
    for label, q in SAMPLE_QUANTILES.items():
        target = kls[min(int(q * len(kls)), len(kls) - 1)]
        p = min(points, key=lambda p: abs(p["kl"] - target))
        rows = read_jsonl(step_samples_path(by_name[p["run"]].dir, int(p["step"])))
        out[label] = {
            "run": p["run"],
            "step": p["step"],
            "kl": p["kl"],
            "reward": p["reward"],
            "completions": [
                {"prompt": x["prompt"], "policy": x["policy"], "r": vader_reward(x["policy"])}
                for x in rows[:SAMPLES_SHOWN]
            ],
        }
    return out


def sentiment_section(runs: list[RunData]) -> dict[str, Any]:
    """The numbers behind the sentiment figures ({} unless the runs are on that task)."""
    if not on_sentiment_task(runs):
        return {}
    points = _points(runs)
    losses = list(dict.fromkeys(p["loss"] for p in points))
    return {
        "reference": _reference(runs),
        "points": points,
        "frontier": {loss: frontier([p for p in points if p["loss"] == loss]) for loss in losses},
        "final": _finals(points),
        "samples": _samples(runs, points),
    }


def _cell(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def sentiment_markdown(section: dict[str, Any]) -> str:
    if not section:
        return ""
    lines = ["", "## Sentiment task: VADER reward on held-out prompts vs KL", ""]
    ref = section["reference"]
    if ref:
        lines.append(
            f"pi_ref: mean r* {ref['reward']:.3f}, {ref['mean_words']:.1f} words, distinct-2 "
            f"{ref['distinct_2']:.3f}, {ref['exclamations']:.2f} '!' per completion."
        )
        lines.append("")
    lines += [
        "| loss | beta | final KL | final r* (mean) | r* per seed | words | distinct-2 | '!' | "
        "short |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in section["final"]:
        seeds = ", ".join(f"{v:.3f}" for v in f["reward_by_seed"])
        lines.append(
            f"| {f['loss']} | {f['beta']:g} | {f['kl']:.2f} | {f['reward']:.3f} | {seeds} | "
            f"{f['mean_words']:.1f} | {f['distinct_2']:.3f} | {f['exclamations']:.2f} | "
            f"{f['frac_short']:.0%} |"
        )
    for label, s in section["samples"].items():
        lines += ["", f"Samples at {label} KL ({s['run']}, step {s['step']}, KL {s['kl']:.2f}):"]
        lines += [
            f"- r* {c['r']:+.3f}: {_cell(c['prompt'], 80)} **{_cell(c['policy'])}**"
            for c in s["completions"]
        ]
    return "\n".join(lines) + "\n"
