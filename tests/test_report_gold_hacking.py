"""`gpo report` on the built-in gold task: win rate beside topic-word repetition and distinct-2
(issue 31: a policy far from pi_ref games the gold reward with words built on the topic)."""

from __future__ import annotations

import json

from gpo.eval.win_rate import step_samples_path
from gpo.gold.text_stats import topic_words

EGG = "An egg is essentially an egg consumed by an egg cartlery that consumes eggshell eggsmithing"


def test_topic_words_counts_words_built_on_the_topic():
    assert topic_words("Write one sentence about an egg.", EGG) == 5
    assert topic_words("Write one sentence about an egg.", "Eggs, EGG and a hen.") == 2
    assert topic_words("Say hello.", EGG) == 0  # no topic: nothing to count


def test_report_draws_the_gold_hacking_figure_from_the_saved_samples(tiny_config, tmp_path):
    from gpo.experiments.report import report
    from gpo.train.trainer import train

    run = tmp_path / "sweep" / "runs" / "loss=logistic_beta=0.1"
    cfg = tiny_config("unused", judge_prompts=3, max_steps=2, eval_steps=1)
    cfg.out, cfg.eval_max_pairs, cfg.kl_prompts, cfg.kl_samples = str(run), 4, 2, 1
    cfg.gold_eval_prompts, cfg.max_new_tokens = 0, 5
    train(cfg)
    path = step_samples_path(run, 2)  # the last checkpoint's completions, made known
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    prompts = ["Write one sentence about an egg."] * len(rows)
    texts = [EGG] + ["plain words here"] * (len(rows) - 1)
    path.write_text("".join(
        json.dumps({**r, "prompt": p, "policy": t}) + "\n"
        for r, p, t in zip(rows, prompts, texts, strict=True)
    ))  # fmt: skip

    result = report(tmp_path / "sweep", out=tmp_path / "report")
    section = result["gold_hacking"]
    last = next(p for p in section["points"] if p["step"] == 2)
    assert last["topic_words"] == 5 / len(rows)
    assert [p["step"] for p in section["points"]] == [1, 2]
    assert section["reference"]["win_rate"] == 0.5
    assert (tmp_path / "report" / "gold_hacking_vs_kl.png").stat().st_size > 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Gold task: win rate beside topic-word repetition" in text
