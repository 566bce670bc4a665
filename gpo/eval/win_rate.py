"""Win rate: the one place where a judge's scores become a win rate with its standard error.

:func:`win_rate` (and :func:`judge_scores` under it) is used by every caller: the per-evaluation
win rate against a fixed opponent, the final gold evaluation of `gpo train`, and the report's
side-by-side matrix.

:class:`WinRateEval`: the opponent (pi_ref by default, or any saved policy with the same
tokenizer) is sampled once per run on the first prompts of the held-out set; every evaluation
samples the policy on the same prompts and asks the judge, per prompt, for the score that the
policy's completion beats the opponent's. Each evaluation's completions go to a JSONL file in
the run folder (``samples/step-NNNNNN.jsonl``), so a report can judge the final policies of
different runs against each other.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from gpo.eval.judges import Judge, Prompt, check_lengths
from gpo.io import read_jsonl, write_jsonl
from gpo.models.reference import Reference
from gpo.models.sampling import sample
from gpo.stats import mean_se

SAMPLES_DIR = "samples"


def judge_scores(
    judge: Judge, prompts: Sequence[Prompt], mine: Sequence[str], theirs: Sequence[str]
) -> list[float]:
    """The judge's per-prompt scores of ``mine`` against ``theirs``, checked: one per prompt,
    each a finite number in [0, 1]. A bad score is refused, naming its prompt: never replaced."""
    check_lengths(prompts, mine, theirs)
    scores = list(judge(prompts, mine, theirs))
    if len(scores) != len(prompts):
        raise ValueError(f"judge {judge.name!r} returned {len(scores)} scores for {len(prompts)}")
    for k, s in enumerate(scores):
        if not (isinstance(s, numbers.Real) and math.isfinite(s) and 0.0 <= s <= 1.0):
            prompt = " ".join(str(prompts[k]).split())[:200]
            raise ValueError(
                f"judge {judge.name!r} returned {s!r} for prompt {k + 1} of {len(prompts)} "
                f"({prompt!r}): scores outside [0, 1] (or not numbers) are refused"
            )
    return [float(s) for s in scores]


def win_rate(
    judge: Judge, prompts: Sequence[Prompt], mine: Sequence[str], theirs: Sequence[str]
) -> tuple[float, float]:
    """(mean score of ``mine`` against ``theirs``, its standard error; see :mod:`gpo.stats`)."""
    return mean_se(judge_scores(judge, prompts, mine, theirs))


@dataclass
class WinRateEval:
    """The policy against a fixed opponent's completions on fixed prompts, by one judge."""

    judge: Judge
    prompts: list[str]
    prompt_ids: list[list[int]]
    opponent: list[str]  # the opponent's completion per prompt, sampled once
    max_new_tokens: int

    def evaluate(
        self, model: nn.Module, tokenizer: Any, seed: int, samples: Path, progress: bool = False
    ) -> dict:
        """Sample the policy, judge it against the opponent, save the rows to ``samples``;
        returns ``{"win_rate": ..., "win_rate_se": ...}``."""
        mine = sample(
            model,
            tokenizer,
            self.prompt_ids,
            1,
            self.max_new_tokens,
            seed=seed,
            show_progress=progress,
            desc=f"eval: sampling for the {self.judge.name} win rate",
        ).text
        scores = judge_scores(self.judge, self.prompts, mine, self.opponent)
        rows = [
            {"prompt": p, "policy": a, "opponent": b, "score": s}
            for p, a, b, s in zip(self.prompts, mine, self.opponent, scores, strict=True)
        ]
        write_jsonl(rows, samples)
        rate, se = mean_se(scores)
        return {"win_rate": rate, "win_rate_se": se}


#: Part of every cached opponent file's name: bump it when sampling changes what a seed draws.
OPPONENT_CACHE_VERSION = 1


def sample_opponent(
    path: str | None,
    reference: Reference,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    seed: int,
    cache_dir: Path | None = None,
) -> list[str]:
    """One completion per prompt from pi_ref (``path`` None) or the saved policy at ``path``.

    pi_ref's completions are the same for every run of a sweep that shares its reference, its
    held-out prompts and its seed: with ``cache_dir`` (the reference's own log-prob cache
    folder, whose name is a hash of its weights) they are sampled once and read back after.
    """
    if path is None:
        cached = _opponent_file(cache_dir, tokenizer, prompt_ids, max_new_tokens, seed)
        if cached is not None and cached.is_file():
            try:
                return list(json.loads(cached.read_text())["texts"])
            except (OSError, ValueError, KeyError):
                pass  # damaged or half-removed: sampled again below
        with reference.model() as ref:
            texts = sample(ref, tokenizer, prompt_ids, 1, max_new_tokens, seed=seed).text
        if cached is not None:
            _write_alone(cached, {"texts": texts})
        return texts
    from gpo.models.loading import load_model_and_tokenizer

    model, their_tokenizer = load_model_and_tokenizer(path)
    if their_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"opponent {path} has a different tokenizer from the policy")
    return sample(model, tokenizer, prompt_ids, 1, max_new_tokens, seed=seed).text


def _opponent_file(
    cache_dir: Path | None,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    seed: int,
) -> Path | None:
    if cache_dir is None:
        return None
    what = [OPPONENT_CACHE_VERSION, len(tokenizer), tokenizer.eos_token_id, max_new_tokens, seed]
    digest = hashlib.sha256(json.dumps([what, prompt_ids]).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"opponent-{digest}.json"


def _write_alone(path: Path, obj: dict[str, Any]) -> None:
    """Atomically, through a temp file of this process's own: runs of a sweep share the folder.
    A failed write only means the next run samples again."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(obj))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def step_samples_path(run_dir: Path, step: int) -> Path:
    return run_dir / SAMPLES_DIR / f"step-{step:06d}.jsonl"


def final_samples(run_dir: Path) -> list[dict[str, Any]] | None:
    """The samples of a run's last evaluation (its final policy), or None if it saved none."""
    files = sorted((run_dir / SAMPLES_DIR).glob("step-*.jsonl"))
    return read_jsonl(files[-1]) if files else None
