"""The built-in gold preference task: template prompts, SmolLM2 responses, a closed-form gold.

Why: the default ``gpo train`` needs preference data whose "truth" is known, so that a trained
policy can be scored (gold win rate against the reference) without a human or a judge model.

**Prompts.** :func:`gpo.gold.prompts.make_prompts` fills short instruction templates (``TEMPLATES``,
e.g. "Write one sentence about a cat.") with topic words from the shipped list
``gpo/data/assets/topics.txt`` (300 singular nouns). Topics are split once and for all: every 8th
word of the list is a held-out *test* topic (37), the rest are *train* topics (263), so test prompts
are never seen in training, not even their topic. Prompts are drawn without replacement from topic x
template, deterministically from a seed.

**Responses (mu).** Two completions per prompt are sampled from the embedded SmolLM2-135M-Instruct
through its chat template, temperature 1 over the full vocabulary, at most 48 new tokens
(:func:`gpo.gold.build.build_gold_dataset`).

**Gold reward** r*(x, y), computed from the prompt text and the response text only
(:func:`gpo.gold.reward.gold_reward`), with ``words`` = the maximal runs of ASCII letters in
the response (lower-cased; "it's" is two words) and n = len(words)::

    r* = W_TOPIC * [response mentions the prompt's topic word (or its plural)]
       - W_LENGTH * |log(n / clip(n, 8, 20))|        # 0 inside 8..20 words, log-distance outside
       + W_END * [response ends with . ! or ? (optionally then a quote or bracket)]
       - W_DISTINCT * (1 - distinct words / n)       # lexical repetition
       - W_REPEAT * (fraction of word 3-grams that repeat an earlier 3-gram)
       - W_ASCII * (fraction of non-ASCII or control characters)

with W_TOPIC = 2, W_LENGTH = 2, W_END = 1, W_DISTINCT = 2, W_REPEAT = 3, W_ASCII = 4 (an empty
response counts as n = 1). No single token scores well: it cannot mention the topic,
have 8-20 words and end a sentence at once; repeating the topic word is charged only by the
repetition terms, weakly (version 2 below). The best score, W_TOPIC + W_END = 3, needs a
complete, on-topic sentence of 8-20 words.

**Version 2** (task ``gold-v2``, judge ``gold:version=2``) subtracts W_TOPIC_REPEAT * max(0,
mentions - 1), W_TOPIC_REPEAT = 1, mentions = the words that are the topic word or its plural: a
policy trained long at a small beta learned to repeat the topic word ("A jacket jacket is ..."),
which version 1 barely charges. Version 1 stays the ``gold`` task's.

**Labels.** For a pair (a, b): Bradley-Terry (default) draws "a preferred" with probability
p* = sigmoid(r*(a) - r*(b)) from a seeded RNG; deterministic mode prefers the higher r* and
drops exact ties. Pairs with identical responses are dropped in both modes.

**Win rate.** The ``gold`` judge (:class:`gpo.eval.judges.GoldJudge`) scores a response against
an opponent on the same prompt with the deterministic gold (win 1, tie 0.5, loss 0; ``mode="bt"``:
p* instead); :func:`gpo.eval.win_rate.win_rate` turns the scores into a mean and its standard
error, as for every judge.

The shipped set ``gpo/data/assets/gold_pairs.jsonl.gz`` (2000 train pairs, 200 held-out test pairs,
seed 0, BT labels; settings and statistics in ``gpo/data/assets/gold_pairs.meta.json``) is what
``gpo data build-gold`` writes with its defaults; elsewhere the bytes may differ, since float
rounding on other hardware or thread counts changes sampled tokens. Rows are in TRL's conversational
format plus metadata, see :func:`gpo.gold.build.label_pair`.

A second gold task, whose reward no one here wrote, lives beside this one: controlled sentiment
generation judged by VADER (``data: sentiment``, ``--judge vader``), see :mod:`gpo.gold.sentiment`.
"""
