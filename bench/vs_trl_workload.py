"""gpo vs TRL (``vs_trl.py``): the workload of one (shape, model) cell: the model folder,
generated rows of the shape's token lengths, the batch order both tools see, token counts and
the padding a TRL-style batch carries."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: fixed shape -> (prompt tokens, tokens of each response including its EOS)
FIXED_SHAPES: dict[str, tuple[int, int]] = {"long_prompt": (400, 40), "short_prompt": (30, 200)}


@dataclasses.dataclass(frozen=True)
class LogNormal:
    """Token lengths ``round(exp(N(log median, sigma^2)))``, clipped to ``[low, high]``."""

    median: float
    sigma: float
    low: int
    high: int

    def draw(self, rng: random.Random) -> int:
        n = round(rng.lognormvariate(math.log(self.median), self.sigma))
        return min(self.high, max(self.low, n))

    def quantile(self, q: float) -> float:
        """The unclipped ``q`` quantile (for the docs: 0.05 and 0.95 give the 5-95% range)."""
        return self.median * math.exp(self.sigma * statistics.NormalDist().inv_cdf(q))


#: The ``variable`` shape: prompt and each response drawn independently (see the docstring for
#: where the parameters come from). Responses include their EOS.
VARIABLE = {"prompt": LogNormal(100, 1.1, 8, 1024), "response": LogNormal(150, 0.75, 4, 512)}
SHAPES = (*FIXED_SHAPES, "variable")
#: pairs per step unless --batch-size says otherwise
DEFAULT_BATCH = {"long_prompt": 2, "short_prompt": 2, "variable": 8}
SEED = 0


def token_digest(rows: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]]) -> str:
    blob = json.dumps([[list(p), list(c), list(r)] for p, c, r in rows]).encode()
    return hashlib.sha256(blob).hexdigest()


def model_dir(name: str, root: Path) -> str:
    if name == "tiny":
        from transformers.utils import logging as hf_logging

        from gpo.models.tiny import tiny_model_and_tokenizer

        path = root / "tiny"
        if not path.exists():
            hf_logging.disable_progress_bar()
            model, tokenizer = tiny_model_and_tokenizer(seed=SEED)
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
        return str(path)
    from gpo.models.embedded import resolve_model_path

    return resolve_model_path("smollm2")


def _word_pool() -> list[str]:
    from gpo.models.tiny import DEFAULT_WORDS

    roles = {"system", "user", "assistant"}
    return [w for w in DEFAULT_WORDS if w.isalpha() and w not in roles]


def _fit_words(
    rng: random.Random, pool: list[str], target: int, count: Callable[[str], int]
) -> str:
    """Random words whose token count (by ``count``) is the largest not above ``target``."""
    words = [rng.choice(pool) for _ in range(target)]
    k = target
    while k > 1 and count(" ".join(words[:k])) > target:
        k -= 1
    while True:
        if k + 1 > len(words):
            words.append(rng.choice(pool))
        if count(" ".join(words[: k + 1])) > target:
            return " ".join(words[:k])
        k += 1


def row_lengths(shape: str, n: int) -> list[tuple[int, int, int]]:
    """Target (prompt, chosen, rejected) token lengths of ``n`` rows (responses with EOS)."""
    if shape in FIXED_SHAPES:
        prompt, response = FIXED_SHAPES[shape]
        return [(prompt, response, response)] * n
    rng = random.Random(SEED + 1)  # its own stream: the words' stream stays as for fixed shapes
    p, r = VARIABLE["prompt"], VARIABLE["response"]
    return [(p.draw(rng), r.draw(rng), r.draw(rng)) for _ in range(n)]


def make_rows(tokenizer: Any, lengths: Sequence[tuple[int, int, int]]) -> list[dict[str, str]]:
    """Standard rows whose prompt and responses (+EOS) have about the ``lengths`` in tokens."""
    rng = random.Random(SEED)
    pool = _word_pool()

    def n_tokens(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    def response_tokens(text: str) -> int:
        return n_tokens(" " + text) + 1  # + the EOS both tools append

    rows = []
    for prompt_len, chosen_len, rejected_len in lengths:
        prompt = _fit_words(rng, pool, prompt_len, n_tokens)
        chosen = rejected = ""
        while chosen == rejected:
            chosen = _fit_words(rng, pool, chosen_len, response_tokens)
            rejected = _fit_words(rng, pool, rejected_len, response_tokens)
        rows.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
    return rows


@dataclasses.dataclass
class Workload:
    """One (shape, model) cell: data files, the batch order, token counts."""

    model_dir: str
    gpo_data: str
    trl_data: str
    n_rows: int
    timed_tokens: int  # real prompt + chosen + rejected tokens of the timed pairs
    mean_lengths: tuple[float, float, float]  # prompt, chosen, rejected
    length_range: tuple[tuple[int, int], tuple[int, int]]  # (min, max) of prompts, of responses
    padding_share: float  # of TRL-style padded batches (each row padded to the longest)
    trl_digest: str  # gpo's token ids in TRL's row order
    linear_params: int  # N in the FLOP estimate


def build_workload(
    shape: str, model: str, root: Path, batch: int, warmup: int, steps: int, accum: int = 1
) -> Workload:
    """Rows for ``warmup + steps`` steps of ``batch`` pairs; TRL pads each micro-batch of
    ``batch / accum`` pairs (gpo's micro-batches are consecutive slices of the same order)."""
    from transformers import AutoTokenizer

    from gpo.data import Limits, parse_rows, tokenize_rows
    from gpo.train.setup import micro_batches

    path = model_dir(model, root)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    n = batch * (warmup + steps)
    rows = make_rows(tokenizer, row_lengths(shape, n))
    pairs, report = tokenize_rows(parse_rows(rows, shape), tokenizer, Limits(100_000), shape)
    if report.kept != n:
        raise RuntimeError(f"{shape}/{model}: tokenization dropped rows: {report}")
    batches = micro_batches(n, batch, SEED, 0)
    order = [i for _ in range(warmup + steps) for i in next(batches)[1]]
    cell = root / f"{shape}-{model}"
    cell.mkdir(parents=True, exist_ok=True)
    gpo_data, trl_data = cell / "gpo.jsonl", cell / "trl.jsonl"
    gpo_data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trl_data.write_text("".join(json.dumps(rows[i]) + "\n" for i in order))
    timed = [pairs[i] for i in order[warmup * batch :]]
    tokens = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in timed)
    lengths = (
        statistics.fmean(len(p.prompt_ids) for p in pairs),
        statistics.fmean(len(p.chosen_ids) for p in pairs),
        statistics.fmean(len(p.rejected_ids) for p in pairs),
    )
    in_order = [pairs[i] for i in order]
    digest = token_digest([(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in in_order])
    prompts = [len(p.prompt_ids) for p in pairs]
    replies = [len(r) for p in pairs for r in (p.chosen_ids, p.rejected_ids)]
    spans = ((min(prompts), max(prompts)), (min(replies), max(replies)))
    micro = batch // accum
    padding = padding_share([in_order[i : i + micro] for i in range(0, n, micro)])
    return Workload(
        path,
        str(gpo_data),
        str(trl_data),
        n,
        tokens,
        lengths,
        spans,
        padding,
        digest,
        linear_params(path),
    )


def padding_share(batches: Sequence[Sequence[Any]]) -> float:
    """Share of padding in batches laid out as TRL 1.16's DPO collator does for text: the 2B rows
    prompt + response, right-padded to the longest row (``DataCollatorForPreference``)."""
    real = padded = 0
    for pairs in batches:
        width = max(
            len(p.prompt_ids) + len(r) for p in pairs for r in (p.chosen_ids, p.rejected_ids)
        )
        padded += 2 * len(pairs) * width
        real += sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    return 1 - real / padded


def linear_params(path: str) -> int:
    """Weights of the model's ``nn.Linear`` layers (LM head included), built on the meta device."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
