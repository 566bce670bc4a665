"""The sentiment gold task (issue 30): movie-review prompts, VADER as r*, the `vader` judge,
the shipped pairs, a tiny-model run on the task and its report section."""

import itertools
import json
import math
import re
import sys
from pathlib import Path

import pytest

from gpo import io
from gpo.data import builtin
from gpo.eval.judges import JUDGES, VaderJudge, resolve_judge
from gpo.gold import sentiment, sentiment_prompts, text_stats, vader
from gpo.gold.sentiment_prompts import make_sentiment_prompts

TEXTS = [
    "",
    " it was a wonderful film, I loved every minute of it.",
    " it was boring and far too long.",
    " great great great!!!",
    " the plot follows a fisherman and his son.",
    " Terrible. Just terrible!",
    " it was fine",
]


# --- the judge -------------------------------------------------------------------------------


def test_vader_judge_is_antisymmetric():
    """s(a, b) + s(b, a) == 1 exactly for every pair, and s(a, a) == 0.5, at several T."""
    for t in (0.05, vader.TEMPERATURE, 1.0, 7.3):
        judge = VaderJudge(temperature=t)
        for a, b in itertools.product(TEXTS, repeat=2):
            ab = judge(["p"], [a], [b])[0]
            ba = judge(["p"], [b], [a])[0]
            assert ab + ba == 1.0, (a, b, t)
            assert 0.0 <= ab <= 1.0
        assert judge(["p"] * 2, TEXTS[:2], TEXTS[:2]) == [0.5, 0.5]


def test_vader_judge_is_the_bt_probability_of_the_compound_score():
    judge = resolve_judge("vader")
    good, bad = TEXTS[1], TEXTS[2]
    r_good, r_bad = vader.vader_reward(good), vader.vader_reward(bad)
    assert r_good > 0.5 and r_bad < 0 and vader.vader_reward("") == 0.0
    expected = 1 / (1 + math.exp(-(r_good - r_bad) / vader.TEMPERATURE))
    assert judge(["x"], [good], [bad]) == [pytest.approx(expected, abs=1e-12)]
    sharper = resolve_judge("vader:temperature=0.05")
    assert sharper(["x"], [good], [bad])[0] > judge(["x"], [good], [bad])[0]
    assert "vader" in JUDGES and "temperature" in JUDGES["vader"].description
    with pytest.raises(ValueError, match="positive"):
        VaderJudge(temperature=0.0)


def test_missing_vader_is_one_line_with_the_install_command(monkeypatch, capsys, tmp_path):
    from gpo.cli import main

    monkeypatch.setitem(sys.modules, "vaderSentiment", None)  # import fails as if absent
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    vader.analyzer.cache_clear()
    try:
        with pytest.raises(vader.MissingDependency, match=re.escape(vader.INSTALL)):
            resolve_judge("vader")
        out = tmp_path / "s.jsonl.gz"
        assert main(["data", "build", "--task", "sentiment", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gpo: error: ") and "pip install" in err[0]
        assert not out.exists()
    finally:
        vader.analyzer.cache_clear()


# --- prompts ---------------------------------------------------------------------------------


def test_train_and_test_prompts_do_not_overlap():
    """Split by film: no test film (and so no test prompt) is ever a training one."""
    train = sentiment_prompts.combinations("train")
    test = sentiment_prompts.combinations("test")
    assert len(train) == 175 * 44 and len(test) == 25 * 44
    assert not {f for f, *_ in train} & {f for f, *_ in test}
    every_train = make_sentiment_prompts(len(train), 0, "train")
    every_test = make_sentiment_prompts(len(test), 0, "test")
    train_texts, test_texts = {p.text for p in every_train}, {p.text for p in every_test}
    assert len(train_texts) == len(train) and len(test_texts) == len(test)  # all distinct
    assert not train_texts & test_texts
    # deterministic in the seed; another seed draws other prompts
    assert make_sentiment_prompts(50, 3, "train") == make_sentiment_prompts(50, 3, "train")
    assert make_sentiment_prompts(50, 3, "train") != make_sentiment_prompts(50, 4, "train")
    with pytest.raises(ValueError, match="1100 distinct prompts"):
        make_sentiment_prompts(1101, 0, "test")


def test_prompts_are_neutral_to_vader():
    """No word of a template, title or genre is in VADER's lexicon, so the completion alone
    sets the sentiment (and repeating the prompt earns nothing)."""
    lexicon = vader.analyzer().lexicon
    text = " ".join(
        [*sentiment_prompts.TEMPLATES, *sentiment_prompts.ASPECTS]
        + [f"{t} {g}" for t, g in sentiment_prompts.all_films()]
    )
    words = {w.lower() for w in re.findall(r"[A-Za-z']+", text)}
    assert not {w for w in words if w in lexicon}
    for p in make_sentiment_prompts(60, 0, "train") + make_sentiment_prompts(20, 0, "test"):
        assert vader.vader_reward(p.text) == 0.0, p.text


# --- labels and statistics ---------------------------------------------------------------------


def test_labels_drop_empty_and_identical_and_follow_vader():
    prompts = make_sentiment_prompts(4, 0, "train")
    pairs = [(TEXTS[1], TEXTS[2]), (TEXTS[0], TEXTS[1]), (TEXTS[3], TEXTS[3]), (TEXTS[2], TEXTS[1])]
    det = sentiment.label_sentiment_pairs(prompts, pairs, "deterministic")
    assert [r["prompt"] for r in det] == [prompts[0].text, prompts[3].text]
    for r in det:
        assert r["chosen"] == TEXTS[1] and r["gold_chosen"] > r["gold_rejected"]
        assert isinstance(r["prompt"], str) and r["split"] == "train"  # TRL standard rows
    bt = sentiment.label_sentiment_pairs(prompts, pairs, "bt", seed=1)
    assert len(bt) == 2
    assert sentiment.relabel_sentiment(bt, "bt", seed=1) == bt
    assert sentiment.relabel_sentiment(det, "deterministic") == det


def test_completion_stats_see_the_hacks():
    s = text_stats.completion_stats(["great great great great!!!", "", "a fine and quiet film"])
    assert s["completions"] == 3
    assert s["mean_words"] == pytest.approx((4 + 0 + 5) / 3)
    assert s["exclamations"] == pytest.approx(1.0)
    assert s["frac_short"] == pytest.approx(1 / 3)  # the empty one
    # bigrams: (great great) x2, (great great!!!); (a fine) (fine and) (and quiet) (quiet film)
    assert s["distinct_2"] == pytest.approx(6 / 7)
    assert math.isnan(text_stats.distinct_n(["one"], 2))


# --- the shipped pairs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    return builtin.load_builtin("sentiment", None)


@pytest.fixture(scope="module")
def meta():
    return json.loads(builtin.SENTIMENT.meta_path.read_text())


def test_shipped_pairs_are_standard_rows_held_out_by_film(shipped, meta):
    assert builtin.SENTIMENT.path.stat().st_size < 3_000_000
    train = [r for r in shipped if r["split"] == "train"]
    test = [r for r in shipped if r["split"] == "test"]
    assert len(train) >= 1000 and len(test) >= 150
    assert meta["summary"]["train"]["pairs"] == len(train)
    assert meta["summary"]["test"]["pairs"] == len(test)
    for r in shipped:
        assert all(isinstance(r[k], str) and r[k].strip() for k in ("prompt", "chosen", "rejected"))
        assert r["chosen"] != r["rejected"]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert not {r["film"] for r in train} & {r["film"] for r in test}
    assert {r["film"] for r in test} <= {t for t, _ in sentiment_prompts.films("test")}
    assert builtin.load_builtin("sentiment", "test") == test


def test_shipped_labels_follow_vader(shipped, meta):
    assert (
        sentiment.relabel_sentiment(shipped, meta["mode"], meta["seed"], meta["label_temperature"])
        == shipped
    )
    higher = sum(r["gold_chosen"] > r["gold_rejected"] for r in shipped) / len(shipped)
    assert higher > 0.6


# --- training and reporting on the task ----------------------------------------------------------


def test_judge_guard_and_is_gold(tiny_config):
    from gpo.train.setup import check_task_judges, is_gold

    cfg = tiny_config("g", data="sentiment", judge_prompts=4)  # judge defaults to "gold"
    assert is_gold(cfg)
    check_task_judges(cfg)  # "gold" is the task's own gold
    assert cfg.judge == "vader"
    check_task_judges(tiny_config("v", data="sentiment", judge_prompts=4, judge="vader"))
    assert not is_gold(tiny_config("x", data="sentiment", eval_data="gold"))
    with pytest.raises(ValueError, match="pass --judge gold"):
        check_task_judges(tiny_config("y", data="gold", judge_prompts=4, judge="vader"))


def test_tiny_run_on_the_task_reports_a_gold_win_rate_and_a_frontier(tiny_config, tmp_path):
    """A tiny model trains on the shipped sentiment pairs; its final gold win rate is VADER's,
    and `gpo report` on its folder draws reward vs KL with the hacking statistics."""
    from gpo.experiments.report import report
    from gpo.stats import mean_se
    from gpo.train.trainer import train

    out = tmp_path / "sweep" / "runs" / "loss=logistic_beta=0.1"
    cfg = tiny_config("unused", data="sentiment", judge_prompts=4, max_steps=2, eval_steps=1)
    cfg.out, cfg.eval_max_pairs, cfg.kl_prompts, cfg.kl_samples = str(out), 4, 2, 1
    cfg.gold_eval_prompts, cfg.max_new_tokens = 6, 5
    summary = train(cfg)
    rows = io.read_jsonl(out / "samples" / "final-gold.jsonl")
    assert len(rows) == 6
    scores = VaderJudge()([r["prompt"] for r in rows], [r["policy"] for r in rows],
                          [r["opponent"] for r in rows])  # fmt: skip
    assert [r["score"] for r in rows] == scores
    assert summary["gold_win_rate"] == mean_se(scores)[0]

    result = report(tmp_path / "sweep", out=tmp_path / "report")
    section = result["sentiment"]
    assert [p["step"] for p in section["points"]] == [1, 2]
    assert section["reference"]["kl"] == 0.0 and "distinct_2" in section["reference"]
    assert set(section["samples"]) == {"low", "middle", "high"}
    for name in ("sentiment_reward_vs_kl", "sentiment_reward_vs_kl_by_loss",
                 "sentiment_hacking_vs_kl"):  # fmt: skip
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Sentiment task" in text and "distinct-2" in text


def test_online_training_on_the_task_is_labelled_by_vader(tiny_config, tmp_path):
    """`--online` on the sentiment task: the default online judge (`gold`) means the task's own
    gold, VADER, so each trained pair's score is VADER's P(chosen beats rejected)."""
    from gpo.train.online import ONLINE_PAIRS
    from gpo.train.trainer import train

    cfg = tiny_config("run", data="sentiment", online=True, max_steps=2, eval_steps=0)
    cfg.max_new_tokens = 6
    train(cfg)
    rows = io.read_jsonl(tmp_path / "run" / ONLINE_PAIRS)
    assert len(rows) == 2 * cfg.batch_size
    scores = VaderJudge()([r["prompt"] for r in rows], [r["chosen"] for r in rows],
                          [r["rejected"] for r in rows])  # fmt: skip
    assert [r["score"] for r in rows] == pytest.approx(scores, abs=1e-12)
    assert any(s != 0.5 for s in scores)  # not all ties: the judge read the texts


def test_frontier_is_the_upper_envelope():
    from gpo.experiments.report.sentiment import frontier

    pts = [{"kl": k, "reward": r} for k, r in [(3, 0.2), (1, 0.1), (2, 0.05), (4, 0.5), (0.5, 0.1)]]
    assert frontier(pts) == [(0.5, 0.1), (3, 0.2), (4, 0.5)]


def test_build_cli_end_to_end(tmp_path, capsys):
    from gpo.cli import main
    from gpo.models.tiny import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "s.jsonl.gz"
    argv = ["data", "build", "--task", "sentiment", "--out", str(out)]
    argv += ["--model", str(tmp_path / "tiny"), "--n-prompts", "8", "--n-test-prompts", "4"]
    argv += ["--max-new-tokens", "6"]
    assert main(argv) == 0
    rows = io.read_jsonl(out)
    meta = json.loads((tmp_path / "s.meta.json").read_text())
    dropped = sum(meta["dropped_pairs"].values())
    assert len(rows) == 12 - dropped and meta["task"] == "sentiment"
    assert meta["summary"]["temperature"] == vader.TEMPERATURE
    assert "sentiment task, BT temperature T = 0.25" in capsys.readouterr().out
    assert main(["data", "gold-stats", "--task", "sentiment", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats.get("train", {}).get("pairs", 0) == sum(r["split"] == "train" for r in rows)
    assert Path(out).is_file()
