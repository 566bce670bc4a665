"""The built-in gold task's reward-hacking watch in `gpo report`: win rate, topic-word repetition
and distinct-2 of the policy's held-out completions at every checkpoint, against KL.

The gold reward pays for mentioning the topic and penalizes repeated words and trigrams, but not
new words built on the topic word: a policy far from pi_ref was seen writing "An egg is
essentially an egg consumed by an egg cartlery that consumes eggshell eggsmithing" with a gold
win rate of 0.91 (issue 31). Every eval that judged a win rate saved the policy's completions
(``samples/step-NNNNNN.jsonl``); per checkpoint this section gives their mean topic words per
completion (:func:`gpo.gold.text_stats.topic_words`), distinct-2 and length beside the eval's
win rate and KL, pi_ref's values from the same files (the opponent column), and a few
completions of the checkpoint with the highest KL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpo.eval.judges import parse_judge_spec
from gpo.eval.win_rate import step_samples_path
from gpo.experiments.report.collect import RunData, finite
from gpo.experiments.report.figures import _colors, _save
from gpo.gold.text_stats import completion_stats, topic_words
from gpo.io import read_jsonl

SAMPLES_SHOWN = 3
KEYS = (("win_rate", "gold win rate"), ("topic_words", "topic words per completion"))
KEYS += (("distinct_2", "distinct-2"),)


def on_gold_task(runs: list[RunData]) -> bool:
    """Judged by the built-in gold reward (on the gold task's data, or on a user's: topic words
    then count only where a prompt names one of the task's topics)."""
    return any(
        r.config.get("data") != "sentiment"
        and parse_judge_spec(str(r.config.get("judge", "gold")))[0] == "gold"
        for r in runs
    )


def _stats(prompts: list[Any], texts: list[str]) -> dict[str, float]:
    """The sentiment task's text statistics (length, distinct-2, ...) plus topic words."""
    words = sum(topic_words(p, t) for p, t in zip(prompts, texts, strict=True))
    return {"topic_words": words / max(len(texts), 1), **completion_stats(texts)}


def _points(runs: list[RunData]) -> list[dict[str, Any]]:
    points = []
    for r in runs:
        for rec in r.evals:
            path = step_samples_path(r.dir, int(rec["step"]))
            if not (finite(rec.get("eval/kl")) and finite(rec.get("eval/win_rate"))):
                continue
            if not path.is_file():
                continue
            rows = read_jsonl(path)
            stats = _stats([x["prompt"] for x in rows], [x["policy"] for x in rows])
            points.append(
                {"run": r.name, "loss": r.key[0], "beta": r.key[1], "seed": r.config.get("seed")}
                | {"step": rec["step"], "kl": rec["eval/kl"], "win_rate": rec["eval/win_rate"]}
                | stats
            )
    return points


def _reference(runs: list[RunData]) -> dict[str, Any] | None:
    """pi_ref's completions (the opponent of runs judged against it; its win rate is 0.5)."""
    for r in runs:
        files = sorted((r.dir / "samples").glob("step-*.jsonl"))
        if not r.config.get("opponent") and files:
            rows = read_jsonl(files[0])
            stats = _stats([x["prompt"] for x in rows], [x["opponent"] for x in rows])
            return {"kl": 0.0, "win_rate": 0.5, **stats}
    return None


def gold_hacking_section(runs: list[RunData]) -> dict[str, Any]:
    """The numbers behind the figure ({} unless the runs are on the gold task with samples)."""
    if not on_gold_task(runs):
        return {}
    points = _points(runs)
    if not points:
        return {}
    top = max(points, key=lambda p: p["kl"])
    run_dir = next(r.dir for r in runs if r.name == top["run"])
    rows = read_jsonl(step_samples_path(run_dir, int(top["step"])))[:SAMPLES_SHOWN]
    shown = [{"policy": x["policy"], "topic_words": topic_words(x["prompt"], x["policy"])}
             for x in rows]  # fmt: skip
    return {
        "reference": _reference(runs),
        "points": points,
        "highest_kl": {k: top[k] for k in ("run", "step", "kl", "win_rate")} | {"samples": shown},
    }


def draw_gold_hacking(plt: Any, section: dict[str, Any], out: Path) -> list[Path]:
    """``gold_hacking_vs_kl.png``: win rate, topic words and distinct-2 vs KL, a colour per loss."""
    if not section:
        return []
    losses = list(dict.fromkeys(p["loss"] for p in section["points"]))
    colors = dict(zip(losses, _colors(plt, len(losses)), strict=True))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    ref = section["reference"]
    for ax, (key, label) in zip(axes, KEYS, strict=True):
        for loss in losses:
            pts = [(p["kl"], p[key]) for p in section["points"] if p["loss"] == loss]
            ax.scatter(*zip(*pts, strict=True), color=colors[loss], s=12, alpha=0.6, label=loss)
        if ref is not None:
            ax.scatter([0.0], [ref[key]], marker="*", s=120, color="black", label="pi_ref")
        ax.set(xlabel="KL (nats)", ylabel=label)
    axes[0].legend(fontsize=7)
    fig.suptitle("gold task: win rate beside what its reward can be gamed with, vs KL")
    return [_save(plt, fig, out / "gold_hacking_vs_kl.png")]


def gold_hacking_markdown(section: dict[str, Any]) -> str:
    if not section:
        return ""
    lines = ["", "## Gold task: win rate beside topic-word repetition and distinct-2", ""]
    ref = section["reference"]
    if ref:
        lines += [
            f"pi_ref: {ref['topic_words']:.2f} topic words per completion, distinct-2 "
            f"{ref['distinct_2']:.3f}, {ref['mean_words']:.1f} words.",
            "",
        ]
    last = {p["run"]: p for p in sorted(section["points"], key=lambda p: p["step"])}
    lines += ["Each run's last checkpoint (every checkpoint: the figure, and `summary.json`):", ""]
    lines += ["| run | step | KL | win rate | topic words | distinct-2 | words |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for p in sorted(last.values(), key=lambda p: p["run"]):
        lines.append(
            f"| {p['run']} | {p['step']} | {p['kl']:.2f} | {p['win_rate']:.3f} | "
            f"{p['topic_words']:.2f} | {p['distinct_2']:.3f} | {p['mean_words']:.1f} |"
        )
    top = section["highest_kl"]
    lines += [
        "",
        f"Samples at the highest KL ({top['run']}, step {top['step']}, KL {top['kl']:.2f}, "
        f"win rate {top['win_rate']:.3f}):",
    ]
    for s in top["samples"]:
        text = " ".join(s["policy"].split()).replace("|", "\\|")[:200]
        lines.append(f"- {s['topic_words']} topic words: **{text}**")
    return "\n".join(lines) + "\n"
