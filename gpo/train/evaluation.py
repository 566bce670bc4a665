"""The evaluations of a training run (a mixin of :class:`gpo.train.trainer.Trainer`): held-out
pair metrics, on-policy KL, win rates, and the KL measurements of KL-targeted training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpo.data.builtin import builtin_task
from gpo.data.formats import prompt_text
from gpo.eval.judges import resolve_judge
from gpo.eval.kl import on_policy_kl
from gpo.eval.pairs import pair_metrics
from gpo.eval.win_rate import SAMPLES_DIR, WinRateEval, sample_opponent, step_samples_path
from gpo.train.run_record import output
from gpo.train.schedule import is_eval_step

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch import nn

    from gpo.data.prepare import PreparedData
    from gpo.data.tokenize import TokenizedPair
    from gpo.losses.objectives import Objective
    from gpo.models.reference import Reference
    from gpo.train.config import TrainConfig


class Evaluations:
    """The evaluations of :class:`gpo.train.trainer.Trainer`, which sets these attributes."""

    cfg: TrainConfig
    data: PreparedData
    model: nn.Module  # the unwrapped policy: what is sampled from
    reference: Reference
    tokenizer: Any  # a Hugging Face tokenizer
    acc: Accelerator
    main: bool
    objective: Objective
    eval_shard: list[TokenizedPair]  # this process's share of the held-out pairs
    win_rate: WinRateEval | None
    run_dir: Path
    beta: float
    _gather: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    eval_segments: Any  # gpo.train.schedule: when to evaluate
    #: (step, (KL, SE)) of the last evaluation's KL, or None once its weights are rolled back.
    _eval_kl_cache: tuple[int, tuple[float, float]] | None = None

    def _evaluates(self, step: int) -> bool:
        segments = self.eval_segments
        return bool(segments) and is_eval_step(step, self.cfg.max_steps, segments)

    def _evaluates_kl(self, step: int) -> bool:
        cfg = self.cfg
        return self.main and cfg.kl_prompts > 0 and cfg.kl_samples > 0 and self._evaluates(step)

    def _win_rate_eval(self, judge: Any, n: int, opponent: str | None) -> WinRateEval:
        """The policy against ``opponent`` (None: pi_ref) on the first ``n`` held-out prompts."""
        cfg, tokenizer = self.cfg, self.tokenizer
        prompts = [prompt_text(r) for r in self.data.eval_rows[:n]]
        ids = [list(p.prompt_ids) for p in self.data.eval[:n]]
        cache = self.reference.cache  # pi_ref's samples are kept beside its log-probs
        theirs = sample_opponent(
            opponent,
            self.reference,
            tokenizer,
            ids,
            cfg.max_new_tokens,
            cfg.seed + 1,
            cache.folder if cache is not None else None,
        )
        return WinRateEval(judge, prompts, ids, theirs, cfg.max_new_tokens)

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out pair metrics (all processes; none when the held-out rows are prompt-only),
        on-policy KL and win rates (main process)."""
        cfg = self.cfg
        result: dict[str, float] = {}
        if self.data.eval_pairs:
            metrics = pair_metrics(
                self.model,
                self.reference,
                self.objective,
                self.eval_shard,
                self.beta,
                cfg.logp_reduction,
                cfg.batch_size,
                self.tokenizer.pad_token_id,
                self.acc.device,
                self._gather,
                share_prompt=cfg.share_prompt,
            )
            result.update({f"eval/{k}": v for k, v in metrics.items()})
        if self.main and cfg.kl_prompts > 0 and cfg.kl_samples > 0:
            kl, se = self._eval_kl(step)
            result.update({"eval/kl": kl, "eval/kl_se": se})
        if self.win_rate is not None:
            path = step_samples_path(self.run_dir, step)
            samples = output(self.run_dir, path.relative_to(self.run_dir))
            wr = self.win_rate.evaluate(
                self.model, self.tokenizer, cfg.seed + step, samples, cfg.progress
            )
            result.update({f"eval/{k}": v for k, v in wr.items()})
        self.acc.wait_for_everyone()
        return result

    def final_gold_win_rate(self) -> dict[str, float]:
        """The gold win rate against pi_ref on ``gold_eval_prompts`` held-out prompts, by the
        built-in task's own gold judge (``gold``; ``vader`` for the sentiment task)."""
        cfg = self.cfg
        task = builtin_task(cfg.data)
        judge = resolve_judge(task.judge if task is not None else "gold")
        gold = self._win_rate_eval(judge, cfg.gold_eval_prompts, None)
        samples = output(self.run_dir, f"{SAMPLES_DIR}/final-gold.jsonl")
        wr = gold.evaluate(self.model, self.tokenizer, cfg.seed, samples, cfg.progress)
        print(
            f"gold win rate vs reference: {wr['win_rate']:.3f} +- {wr['win_rate_se']:.3f} "
            f"({len(gold.prompts)} held-out prompts)"
        )
        return {"gold_win_rate": wr["win_rate"], "gold_win_rate_se": wr["win_rate_se"]}

    def _kl(self, prompts: list[Any], seed: int, progress: bool = False) -> tuple[float, float]:
        """On-policy KL (+- SE) of the policy on ``prompts``, ``kl_samples`` completions each."""
        cfg = self.cfg
        return on_policy_kl(
            self.model,
            self.reference,
            self.tokenizer,
            prompts,
            cfg.kl_samples,
            cfg.max_new_tokens,
            seed=seed,
            show_progress=progress,
            estimator=cfg.kl_estimator,
        )

    def _eval_kl(self, step: int) -> tuple[float, float]:
        """The evaluation's on-policy KL after ``step``, sampled once: KL-targeted training's
        controller may take it before :meth:`evaluate` reports it (``Trainer._steer``)."""
        cached = self._eval_kl_cache
        if cached is None or cached[0] != step:
            prompts = [p.prompt_ids for p in self.data.eval[: self.cfg.kl_prompts]]
            cached = (step, self._kl(prompts, self.cfg.seed + step, self.cfg.progress))
            self._eval_kl_cache = cached
        return cached[1]

    def _measure_kl(self, indices: list[int], step: int) -> tuple[float, float]:
        """KL-targeted training's measurement (:mod:`gpo.train.kl_control`)."""
        prompts = [self.data.eval[i].prompt_ids for i in indices]
        return self._kl(prompts, self.cfg.seed + 7919 * step)  # not an eval's seed
