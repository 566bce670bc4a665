import itertools
import json
import math
import random

import pytest

from gpo import io
from gpo.data import builtin
from gpo.eval.judges import GoldJudge, task_judge_spec
from gpo.eval.win_rate import win_rate
from gpo.gold import build, reward
from gpo.gold import prompts as gold_prompts
from gpo.gold.reward import gold_prefers, gold_reward

P = "Write one sentence about a cat."
GOOD = "A cat is a small and curious animal that loves to nap in the warm sun."
OFF_TOPIC = "A dog is a small and curious animal that loves to nap in the warm sun."
NO_END = "A cat is a small and curious animal that loves to nap in the warm sun and"
TOO_LONG = (
    "A cat is a small and curious animal that loves to nap in the warm sun, and when it wakes "
    "up it stretches, walks around the house, looks out of the window at birds, eats some food "
    "from its bowl and then goes right back to sleep on the sofa."
)
REPETITIVE = "A cat is a cat is a cat is a cat is a cat is a cat."


def test_good_response_beats_each_flaw():
    good = gold_reward(P, GOOD)
    assert good == pytest.approx(reward.W_TOPIC + reward.W_END - reward.W_DISTINCT * (1 - 15 / 16))
    for worse in (OFF_TOPIC, NO_END, TOO_LONG, REPETITIVE, "Cat.", "cat", "", "Cats are nice."):
        assert gold_reward(P, worse) < good - 0.5, worse
    # Each flaw costs exactly its own term.
    assert good - gold_reward(P, OFF_TOPIC) == pytest.approx(reward.W_TOPIC)
    assert gold_reward(P, NO_END) < gold_reward(P, GOOD)


def test_one_token_and_degenerate_responses_score_low():
    typical = gold_reward(P, TOO_LONG)  # a rambling but on-topic, finished answer
    for trick in ("Cat.", "cat", "!", "", " cats?", "Cat cat cat cat cat cat cat cat cat cat."):
        assert gold_reward(P, trick) < typical, trick
    assert gold_reward(P, "") < gold_reward(P, "Cat.")
    assert gold_reward(P, GOOD.replace("sun", "sün ☀☀☀")) < gold_reward(P, GOOD)


def test_length_penalty_shape():
    lo, hi = reward.LENGTH_BAND
    assert all(reward.length_penalty(n) == 0 for n in range(lo, hi + 1))
    below = [reward.length_penalty(n) for n in range(0, lo + 1)]
    above = [reward.length_penalty(n) for n in range(hi, 200)]
    assert below[1] == pytest.approx(math.log(lo))
    assert all(a >= b for a, b in itertools.pairwise(below))  # shrinks towards lo
    assert all(a < b for a, b in itertools.pairwise(above))  # grows past hi
    assert reward.length_penalty(2 * hi) == pytest.approx(math.log(2))


def test_topic_extraction_and_plurals():
    assert gold_prompts.extract_topic("Describe an apple in a few words.") == "apple"
    assert gold_prompts.extract_topic("Write a short, friendly sentence about the butterfly.") == (
        "butterfly"
    )
    assert gold_prompts.extract_topic(
        [{"role": "user", "content": "What is a leaf? Answer briefly."}]
    ) == ("leaf")
    assert (
        gold_prompts.extract_topic("I like many foxes, tell me more") == "fox"
    )  # fallback: word list
    assert gold_prompts.extract_topic("Say hello.") is None
    assert reward.gold_features("What is a butterfly?", "Butterflies fly.").on_topic
    assert reward.gold_features("What is a leaf?", "Leaves fall.").on_topic
    assert not reward.gold_features("What is a leaf?", "Leafy greens.").on_topic
    # Without a known topic nobody gets the topic credit.
    assert gold_reward("Say hello.", GOOD) == pytest.approx(gold_reward(P, GOOD) - reward.W_TOPIC)


def test_prefers_and_win_rate_by_hand():
    assert gold_prefers(P, GOOD, OFF_TOPIC) == 1.0
    assert gold_prefers(P, OFF_TOPIC, GOOD) == 0.0
    assert gold_prefers(P, GOOD, GOOD) == 0.5
    with pytest.raises(ValueError):
        gold_prefers(P, GOOD, GOOD, mode="nope")
    ps = [P] * 4
    mean, se = win_rate(GoldJudge(), ps, [GOOD, OFF_TOPIC, GOOD, GOOD], [NO_END, GOOD, GOOD, "x"])
    scores = [1.0, 0.0, 0.5, 1.0]
    assert mean == pytest.approx(0.625)
    sd = math.sqrt(sum((s - 0.625) ** 2 for s in scores) / 3)
    assert se == pytest.approx(sd / 2)
    bt_mean, _ = win_rate(GoldJudge(mode="bt"), ps[:1], [GOOD], [OFF_TOPIC])
    assert bt_mean == pytest.approx(1 / (1 + math.exp(-reward.W_TOPIC)))
    with pytest.raises(ValueError):
        win_rate(GoldJudge(), ps, [GOOD], [GOOD])


def test_bradley_terry_draws_match_sigmoid():
    a, b = GOOD, NO_END  # gap W_END + the distinct-ratio difference: p* well inside (0, 1)
    p = reward.gold_probability(P, a, b)
    assert 0.6 < p < 0.95
    rng = random.Random(0)
    wins = [gold_prefers(P, a, b, mode="bt", rng=rng) for _ in range(4000)]
    assert set(wins) == {0.0, 1.0}
    assert sum(wins) / len(wins) == pytest.approx(p, abs=3 * math.sqrt(p * (1 - p) / 4000))
    assert reward.gold_probability(P, b, a) == pytest.approx(1 - p)


def test_make_prompts_deterministic_distinct_and_split():
    a = gold_prompts.make_prompts(300, seed=1)
    assert a == gold_prompts.make_prompts(300, seed=1)
    assert a != gold_prompts.make_prompts(300, seed=2)
    assert len({p.text for p in a}) == 300
    assert all(gold_prompts.extract_topic(p.text) == p.topic for p in a)
    train, test = set(gold_prompts.topics("train")), set(gold_prompts.topics("test"))
    assert not train & test and len(train | test) == len(gold_prompts.all_topics()) == 300
    t = gold_prompts.make_prompts(100, seed=1, split="test")
    assert {p.topic for p in t} <= test and {p.topic for p in a} <= train
    with pytest.raises(ValueError):
        gold_prompts.make_prompts(10_000, split="test")


def test_label_pairs_modes():
    prompts = [gold_prompts.GoldPrompt(P, "cat", 0, "train")] * 3
    pairs = [(GOOD, OFF_TOPIC), (OFF_TOPIC, GOOD), (GOOD, GOOD)]
    det = build.label_pairs(prompts, pairs, mode="deterministic")
    assert len(det) == 2  # identical responses dropped
    assert all(r["gold_chosen"] > r["gold_rejected"] for r in det)
    assert [r["chosen_index"] for r in det] == [0, 1]
    bt = build.label_pairs(prompts, pairs, mode="bt", seed=5)
    assert bt == build.label_pairs(prompts, pairs, mode="bt", seed=5)
    assert build.relabel(bt, mode="bt", seed=5) == bt
    row = bt[0]
    assert row["prompt"] == [{"role": "user", "content": prompts[0].text}]
    assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"


def test_jsonl_roundtrip(tmp_path):
    rows = [{"a": 1, "t": "é"}, {"a": 2}]
    for name in ("x.jsonl", "x.jsonl.gz"):
        io.write_jsonl(rows, tmp_path / name)
        assert io.read_jsonl(tmp_path / name) == rows


# --- the shipped dataset ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    return builtin.load_builtin_gold(None)


@pytest.fixture(scope="module")
def meta():
    return json.loads(builtin.BUILTIN_GOLD_META_PATH.read_text())


def test_shipped_file_is_small():
    assert builtin.BUILTIN_GOLD_PATH.stat().st_size < 3_000_000


def test_shipped_rows_have_the_format(shipped, meta):
    train = [r for r in shipped if r["split"] == "train"]
    test = [r for r in shipped if r["split"] == "test"]
    assert len(train) >= 1500 and len(test) >= 150
    assert len(shipped) == len(train) + len(test)
    assert meta["summary"]["train"]["pairs"] == len(train)
    for r in shipped:
        assert r["prompt"][0]["role"] == "user" and len(r["prompt"]) == 1
        assert r["chosen"][0]["role"] == "assistant" and r["rejected"][0]["role"] == "assistant"
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
    assert builtin.load_builtin_gold("train") == train


def test_shipped_test_prompts_are_held_out(shipped):
    def prompts(split):
        return {r["prompt"][0]["content"] for r in shipped if r["split"] == split}

    def topics(split):
        return {r["topic"] for r in shipped if r["split"] == split}

    assert not prompts("train") & prompts("test")
    assert not topics("train") & topics("test")
    assert topics("test") <= set(gold_prompts.topics("test"))


def test_shipped_labels_follow_the_current_gold(shipped, meta):
    # r* stored in the file is today's formula, and the labels are what the seed gives.
    for r in shipped[:: max(1, len(shipped) // 300)]:
        p = r["prompt"][0]["content"]
        assert r["gold_chosen"] == pytest.approx(
            gold_reward(p, r["chosen"][0]["content"]), abs=1e-5
        )
        assert r["gold_rejected"] == pytest.approx(
            gold_reward(p, r["rejected"][0]["content"]), abs=1e-5
        )
    assert build.relabel(shipped, mode=meta["mode"], seed=meta["seed"]) == shipped
    higher = sum(r["gold_chosen"] > r["gold_rejected"] for r in shipped) / len(shipped)
    assert higher > 0.7 if meta["mode"] == "bt" else higher == 1.0


def test_build_gold_cli_end_to_end(tmp_path, capsys):
    from gpo.cli import main
    from gpo.models.tiny import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "g.jsonl.gz"
    argv = ["data", "build-gold", "--out", str(out), "--model", str(tmp_path / "tiny")]
    argv += ["--n-prompts", "6", "--n-test-prompts", "3", "--max-new-tokens", "5"]
    assert main(argv) == 0
    rows = io.read_jsonl(out)
    assert [r["split"] for r in rows] == ["train"] * 6 + ["test"] * 3
    meta = json.loads((tmp_path / "g.meta.json").read_text())
    assert meta["summary"]["train"]["pairs"] == 6 and meta["mode"] == "bt"
    assert "train: 6 pairs over 6 prompts" in capsys.readouterr().out
    assert main(["data", "gold-stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["pairs"] == 3


# --- version 2: the topic-repetition term -------------------------------------------------------

HACKED = "A cat cat is a friendly cat indeed, a cat that naps in the sun."


def test_version_2_charges_each_topic_mention_after_the_first():
    once = gold_reward(P, GOOD, version=2)
    assert once == gold_reward(P, GOOD)  # one mention: the same reward as version 1
    v1, v2 = gold_reward(P, HACKED), gold_reward(P, HACKED, version=2)
    assert reward.gold_features(P, HACKED).topic_mentions == 4
    assert v2 == pytest.approx(v1 - 3 * reward.W_TOPIC_REPEAT)
    assert gold_reward(P, "Cats are cats.", version=2) == pytest.approx(
        gold_reward(P, "Cats are cats.") - reward.W_TOPIC_REPEAT  # plurals count as mentions
    )
    assert gold_prefers(P, GOOD, HACKED, version=2) == 1.0
    assert GoldJudge(version=2)([P], [GOOD], [HACKED]) == [1.0]
    with pytest.raises(ValueError, match="version must be one of"):
        gold_reward(P, GOOD, version=3)
    with pytest.raises(ValueError, match="version must be one of"):
        GoldJudge(version=0)


def test_gold_v2_task_is_the_v1_pairs_relabelled(shipped):
    v2 = builtin.load_builtin("gold-v2", None)
    meta_v2 = json.loads(builtin.GOLD_V2.meta_path.read_text())
    assert meta_v2["summary"]["gold_version"] == 2
    assert build.relabel(shipped, mode="bt", seed=0, version=2) == v2
    assert build.relabel(v2, mode="bt", seed=0, version=1) == shipped  # same pairs, same draws
    changed = sum(a["chosen"] != b["chosen"] for a, b in zip(shipped, v2, strict=True))
    assert 0 < changed < 0.15 * len(v2)  # labels move only where a response repeats the topic


@pytest.mark.parametrize(
    ("data", "spec", "resolved"),
    [
        ("gold", "gold", "gold"),
        ("gold-v2", "gold", "gold:version=2"),
        ("gold-v2", "gold:mode=bt", "gold:version=2,mode=bt"),
        ("sentiment", "gold", "vader"),
        ("gold-v2", "local:model=smollm2", "local:model=smollm2"),
    ],
)
def test_gold_on_a_task_is_that_tasks_own_gold(data, spec, resolved):
    assert task_judge_spec(spec, builtin.builtin_task(data).judge) == resolved


def test_relabel_cli_writes_the_v2_file(tmp_path, capsys):
    from gpo.cli import main

    out = tmp_path / "v2.jsonl.gz"
    argv = ["data", "build", "--task", "gold-v2", "--relabel", str(builtin.BUILTIN_GOLD_PATH)]
    assert main([*argv, "--out", str(out)]) == 0
    assert io.read_jsonl(out) == builtin.load_builtin("gold-v2", None)
    meta = json.loads((tmp_path / "v2.meta.json").read_text())
    assert meta["command"].startswith("gpo data build --task gold-v2 --relabel gold_pairs.jsonl.gz")
    assert main(["data", "gold-stats", "--task", "gold-v2", "--json"]) == 0
    assert '"gold_version": 2' in capsys.readouterr().out
    argv = ["data", "build", "--task", "sentiment", "--relabel", str(out), "--out", str(out)]
    assert main(argv) == 2
    assert "the sentiment task has no gold reward versions" in capsys.readouterr().err
