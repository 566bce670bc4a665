"""Win rate of the policy against a fixed opponent at each evaluation, judged by a pluggable judge.

The opponent (pi_ref by default, or any saved policy with the same tokenizer) is sampled once per
run on the first ``judge_prompts`` held-out prompts; every evaluation samples the policy on the
same prompts and asks the judge, per prompt, for the score that the policy's completion beats
the opponent's. Each evaluation's completions go to ``samples/step-NNNNNN.jsonl`` in the run
folder, so a report can judge the final policies of different runs against each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from gpo.gold import mean_and_se, read_jsonl, write_jsonl
from gpo.judges import Judge, resolve_judge
from gpo.sampling import sample

SAMPLES_DIR = "samples"


@dataclass
class WinRateEval:
    judge: Judge
    prompts: list[str]
    prompt_ids: list[list[int]]
    opponent: list[str]  # the opponent's completion per prompt, sampled once
    max_new_tokens: int
    seed: int

    def evaluate(self, model: nn.Module, tokenizer: Any, step: int, run_dir: Path) -> dict:
        """Sample the policy, judge it against the opponent, save the samples; the metrics."""
        mine = sample(
            model, tokenizer, self.prompt_ids, 1, self.max_new_tokens, seed=self.seed + step
        )
        scores = self.judge(self.prompts, mine.text, self.opponent)
        rows = [
            {"prompt": p, "policy": a, "opponent": b, "score": s}
            for p, a, b, s in zip(self.prompts, mine.text, self.opponent, scores, strict=True)
        ]
        write_jsonl(rows, run_dir / SAMPLES_DIR / f"step-{step:06d}.jsonl")
        rate, se = mean_and_se(scores)
        return {"eval/win_rate": rate, "eval/win_rate_se": se}


def _sample_opponent(
    path: str | None, reference: Any, tokenizer: Any, prompt_ids: list[list[int]], n: int, seed: int
) -> list[str]:
    if path is None:
        with reference.model() as ref:
            return sample(ref, tokenizer, prompt_ids, 1, n, seed=seed).text
    from gpo.models import load_model_and_tokenizer

    model, their_tokenizer = load_model_and_tokenizer(path)
    if their_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"opponent {path} has a different tokenizer from the policy")
    return sample(model, tokenizer, prompt_ids, 1, n, seed=seed).text


def build_win_rate_eval(cfg: Any, data: Any, tokenizer: Any, reference: Any) -> WinRateEval | None:
    """The per-eval win rate of a run (a :class:`gpo.config.TrainConfig`), or None when off."""
    if cfg.judge_prompts <= 0:
        return None
    from gpo.data.prepare import prompt_text

    judge = resolve_judge(cfg.judge)
    n = min(cfg.judge_prompts, len(data.eval))
    prompts = [prompt_text(r) for r in data.eval_rows[:n]]
    ids = [list(p.prompt_ids) for p in data.eval[:n]]
    opponent = _sample_opponent(
        cfg.opponent, reference, tokenizer, ids, cfg.max_new_tokens, cfg.seed + 1
    )
    return WinRateEval(judge, prompts, ids, opponent, cfg.max_new_tokens, cfg.seed)


def final_samples(run_dir: Path) -> list[dict[str, Any]] | None:
    """The samples of a run's last evaluation (its final policy), or None if it saved none."""
    files = sorted((run_dir / SAMPLES_DIR).glob("step-*.jsonl"))
    return read_jsonl(files[-1]) if files else None
