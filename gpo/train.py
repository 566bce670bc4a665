"""`gpo train`: offline preference optimization of a causal LM with any objective.

Built on Accelerate (a plain loop rather than the HF ``Trainer``: the step is a few lines, and
owning the loop keeps the data order, checkpoints and logging exact and inspectable). The
objective is an object from :func:`gpo.objectives.resolve_objective`; the loop never looks at
its name.

Data order: every micro-step takes the next ``batch_size * num_processes`` pairs of a seeded
permutation (a new one each epoch) and process ``r`` uses slice ``r``; so one process with batch
``2b`` and two with ``b`` see the same global batches, and a resumed run continues exactly where
its checkpoint stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gpo.checkpoint import latest_usable_checkpoint, save_checkpoint
from gpo.config import TrainConfig
from gpo.data.collate import collate_for_training
from gpo.data.prepare import PreparedData, prepare_data, prompt_text
from gpo.data.tokenize import Limits, TokenizedPair
from gpo.evaluate import gold_win_rate, on_policy_kl, pair_metrics
from gpo.guards import (
    NonFiniteGuard,
    TrainingError,
    check_decreasing_at_zero,
    check_free_space,
    checkpoint_bytes,
    finite_objective,
    writable_run_dir,
)
from gpo.host_memory import reuse_freed_memory
from gpo.logps import PolicyLogps, SequenceLogps
from gpo.metrics import concat_values, pair_values, reduce_metrics
from gpo.models import add_lora, disable_dropout, frozen_copy, load_model_and_tokenizer
from gpo.objectives import resolve_objective
from gpo.reference import Reference
from gpo.runs import print_config, write_json
from gpo.schedule import is_eval_step, segments_for
from gpo.tracking import Tracker
from gpo.win_rate import build_win_rate_eval

#: Config keys that may differ when resuming (they do not change the optimisation).
RESUMABLE_CHANGES = {
    "resume",
    "progress",
    "out",
    "max_steps",
    "save_steps",
    "save_total_limit",
    "report_to",
    "logging_steps",
    "eval_steps",
    "eval_schedule",
    "save_final",
    "ref_cache",
    "on_nonfinite",
    "reuse_host_memory",
}


#: Called after every optimizer step with ``(step, seconds since the loop started)``.
StepCallback = Callable[[int, float], None]


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW; ``adamw_fused`` updates every tensor in one kernel (same algorithm, ~5x faster
    update on CPU than torch's default per-tensor loop, which matters in full fine-tuning)."""
    fused = cfg.optim == "adamw_fused"
    return torch.optim.AdamW(
        params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused or None
    )


def micro_batches(
    n: int, global_batch: int, seed: int, start: int, shuffle: bool = True
) -> Iterator[tuple[int, list[int]]]:
    """``(micro_step, indices)`` of global batches from micro-step ``start`` on (drop_last).

    With ``shuffle=False`` every epoch reads the rows in source order.
    """
    per_epoch = n // global_batch
    if per_epoch == 0:
        raise ValueError(
            f"only {n} training pairs, fewer than one global batch of {global_batch}; "
            "lower batch_size"
        )
    step = start
    while True:
        epoch, k = divmod(step, per_epoch)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        yield step, perm[k * global_batch : (k + 1) * global_batch].tolist()
        step += 1


def gather_uneven(accelerator: Any, t: torch.Tensor) -> torch.Tensor:
    """All processes' rows of ``t`` in rank order, even when their counts differ (eval shards)."""
    if accelerator.num_processes == 1:
        return t
    sizes = accelerator.gather(torch.tensor([t.shape[0]], device=t.device)).tolist()
    padded = accelerator.gather(accelerator.pad_across_processes(t, dim=0))
    width = max(sizes)
    return torch.cat([padded[r * width : r * width + n] for r, n in enumerate(sizes)])


def _check_resume(run_dir: Path, cfg: TrainConfig) -> None:
    saved = json.loads((run_dir / "config.json").read_text())
    now = dataclasses.asdict(cfg)
    differ = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if differ:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in differ)
        raise ValueError(f"refusing to resume {run_dir}: config differs ({detail})")


def _build(cfg: TrainConfig) -> tuple[Any, Any, Reference]:
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.dtype, cfg.trust_remote_code)
    disable_dropout(model)
    if cfg.finetune == "lora":
        model = add_lora(
            model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules
        )
        return model, tokenizer, Reference(model)
    return model, tokenizer, Reference(model, frozen=frozen_copy(model))


def _prepare(cfg: TrainConfig, tokenizer: Any) -> PreparedData:
    limits = Limits(
        cfg.max_length, cfg.max_prompt_length, cfg.max_completion_length, cfg.prompt_truncation
    )
    return prepare_data(
        cfg.data,
        cfg.split,
        cfg.eval_data,
        cfg.eval_split,
        cfg.eval_fraction,
        tokenizer,
        limits,
        cfg.seed,
    )


def _accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator

    return Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        # Without cpu=True, Accelerate under torchrun on a CPU-only host runs each process alone.
        cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
    )


class Trainer:
    """One training run: set up in ``__init__``, carried out by :meth:`run`."""

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[StepCallback] = ()) -> None:
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.objective = resolve_objective(cfg.loss)  # fail fast, before any model is loaded
        check_decreasing_at_zero(self.objective)
        if cfg.reuse_host_memory:  # before the model loads (page faults: 6-15% of a CPU step)
            reuse_freed_memory()
        self.acc = acc = _accelerator(cfg)
        self.main = acc.is_main_process
        self.run_dir = self._run_dir()
        set_seed(cfg.seed)

        model, self.tokenizer, self.reference = _build(cfg)
        self.data = _prepare(cfg, self.tokenizer)
        if self.main:
            for report in self.data.reports:
                print(f"data: {report}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        if self.main:  # a too-full disk fails now, not at the first checkpoint
            ckpt = checkpoint_bytes(model, self.params, cfg.finetune == "lora")
            check_free_space(self.run_dir, ckpt, cfg)
        optimizer = make_optimizer(cfg, self.params)
        self.scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=int(cfg.warmup_ratio * cfg.max_steps),
            num_training_steps=cfg.max_steps,
        )
        self.policy, self.optimizer = acc.prepare(PolicyLogps(model, cfg.logp_reduction), optimizer)
        self.model = acc.unwrap_model(self.policy).model  # what is saved and sampled from
        self.reference.to(acc.device)
        _attach_ref_cache(cfg, self.reference)
        # fp16's GradScaler already skips steps with inf gradients, so only losses are checked.
        self.guard = NonFiniteGuard(cfg.on_nonfinite, acc.device, acc.scaler is None)

        self.start_step = self._resume() if cfg.resume else 0
        self.tracker = Tracker(
            self.run_dir,
            cfg.report_to,
            dataclasses.asdict(cfg),
            enabled=self.main,
            truncate_after=self.start_step,
        )
        world, rank = acc.num_processes, acc.process_index
        self.eval_shard = self.data.eval[: cfg.eval_max_pairs][rank::world]
        self.eval_segments = segments_for(cfg.eval_schedule, cfg.eval_steps)
        self.win_rate = (
            build_win_rate_eval(cfg, self.data, self.tokenizer, self.reference)
            if self.main
            else None
        )

    def _run_dir(self) -> Path:
        cfg = self.cfg
        if cfg.resume and (cfg.out is None or not (Path(cfg.out) / "config.json").exists()):
            raise ValueError("--resume needs --out pointing at an existing run folder")
        run_dir = None
        if self.main:
            run_dir = writable_run_dir(cfg.out, "train")
            if cfg.resume:
                _check_resume(run_dir, cfg)
            print_config(cfg)
            write_json(run_dir / "config.json", cfg)
        return Path(self.acc.gather_for_metrics([str(run_dir)], use_gather_object=True)[0])

    def _resume(self) -> int:
        state = latest_usable_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler)
        if self.main:
            print(
                f"resuming at step {state['step']}" if state else "no usable checkpoint: starting"
            )
        return state["step"] if state else 0

    def _gather(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: gather_uneven(self.acc, t) for k, t in values.items()}

    def _micro_step(self, step: int, micro: int, indices: list[int]) -> dict[str, torch.Tensor]:
        """Forward and backward of this process's share of one global batch."""
        cfg, b, rank = self.cfg, self.cfg.batch_size, self.acc.process_index
        pairs: list[TokenizedPair] = [
            self.data.train[i] for i in indices[rank * b : (rank + 1) * b]
        ]
        pad = self.tokenizer.pad_token_id
        batch = collate_for_training(pairs, pad, cfg.share_prompt).to(self.acc.device)
        with self.acc.accumulate(self.policy):
            policy = SequenceLogps(*self.policy(batch))
            ref = self.reference.logps(batch, cfg.logp_reduction)
            out = finite_objective(self.objective, policy, ref, cfg.beta)
            loss = out.losses.mean()
            self.guard.watch_loss(loss, micro, batch.indices)  # checked once per step, below
            self.acc.backward(loss)
            norm = None
            if self.acc.sync_gradients and cfg.max_grad_norm > 0:
                norm = self.acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
            if not self.acc.sync_gradients or self.guard.step_ok(step, self.params, norm):
                self.optimizer.step()
            self.optimizer.zero_grad()
        return self._gather(pair_values(out, policy, ref, cfg.beta))

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out pair metrics (all processes) and on-policy KL (main process)."""
        cfg = self.cfg
        metrics = pair_metrics(
            self.model,
            self.reference,
            self.objective,
            self.eval_shard,
            cfg.beta,
            cfg.logp_reduction,
            cfg.batch_size,
            self.tokenizer.pad_token_id,
            self.acc.device,
            self._gather,
            share_prompt=cfg.share_prompt,
        )
        result = {f"eval/{k}": v for k, v in metrics.items()}
        if self.main and cfg.kl_prompts > 0 and cfg.kl_samples > 0:
            prompts = [p.prompt_ids for p in self.data.eval[: cfg.kl_prompts]]
            kl, se = on_policy_kl(
                self.model,
                self.reference,
                self.tokenizer,
                prompts,
                cfg.kl_samples,
                cfg.max_new_tokens,
                seed=cfg.seed + step,
            )
            result.update({"eval/kl": kl, "eval/kl_se": se})
        if self.win_rate is not None:
            result.update(self.win_rate.evaluate(self.model, self.tokenizer, step, self.run_dir))
        self.acc.wait_for_everyone()
        return result

    def save(self, step: int) -> None:
        if self.reference.cache is not None:
            self.reference.cache.flush()
        if self.main:
            state = {"config": dataclasses.asdict(self.cfg)}
            save_checkpoint(
                self.run_dir,
                step,
                self.model,
                self.optimizer,
                self.scheduler,
                state,
                self.cfg.save_total_limit,
            )
        self.acc.wait_for_everyone()

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        world = self.acc.num_processes
        accum = cfg.gradient_accumulation_steps
        batches = micro_batches(
            len(self.data.train),
            cfg.batch_size * world,
            cfg.seed,
            self.start_step * accum,
            cfg.shuffle,
        )
        window: list[dict[str, torch.Tensor]] = []
        last: dict[str, float] = {}
        last_eval: dict[str, float] = {}
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.start_step,
            desc="train",
            disable=not (self.main and cfg.progress),
        )
        t0 = time.perf_counter()
        self.policy.train()
        for step in range(self.start_step + 1, cfg.max_steps + 1):
            for _ in range(accum):
                micro, indices = next(batches)
                window.append(self._micro_step(step, micro, indices))
            self.scheduler.step()
            bar.update(1)
            for callback in self.callbacks:
                callback(step, time.perf_counter() - t0)
            if step % cfg.logging_steps == 0 or step == cfg.max_steps:
                last = reduce_metrics(concat_values(window))
                epoch = (micro + 1) * cfg.batch_size * world / len(self.data.train)
                last.update(learning_rate=self.scheduler.get_last_lr()[0], epoch=epoch)
                if self.guard.skipped:  # on_nonfinite=skip: how many updates were dropped
                    last["nonfinite_skipped_steps"] = self.guard.skipped
                self.tracker.log(step, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['rewards/accuracies']:.2f}")
                window = []
            if self.eval_segments and is_eval_step(step, cfg.max_steps, self.eval_segments):
                last_eval = self.evaluate(step)
                self.tracker.log(step, last_eval)
            if cfg.save_steps > 0 and step % cfg.save_steps == 0 and step < cfg.max_steps:
                self.save(step)
        bar.close()
        if self.reference.cache is not None:  # here, not in finish(): subclasses replace that
            self.reference.cache.flush()
        summary: dict[str, Any] = {
            "train": last,
            "eval": last_eval,
            "steps": cfg.max_steps,
            "train_seconds": time.perf_counter() - t0,
            "run_dir": str(self.run_dir),
        }
        return self.finish(summary)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Gold win rate (gold data), final model, summary and plots; main process only."""
        cfg = self.cfg
        if self.main and _is_gold(cfg) and cfg.gold_eval_prompts > 0:
            rows = self.data.eval_rows[: cfg.gold_eval_prompts]
            ids = [p.prompt_ids for p in self.data.eval[: cfg.gold_eval_prompts]]
            rate, se = gold_win_rate(
                self.model,
                self.reference,
                self.tokenizer,
                [prompt_text(r) for r in rows],
                ids,
                cfg.max_new_tokens,
                seed=cfg.seed,
            )
            summary.update(gold_win_rate=rate, gold_win_rate_se=se)
            print(
                f"gold win rate vs reference: {rate:.3f} +- {se:.3f} ({len(ids)} held-out prompts)"
            )
        cache = self.reference.cache
        if cache is not None and self.main:
            print(
                f"reference log-probs: {cache.hits} pairs from the cache, {cache.misses} "
                f"computed ({cache.folder})"
            )
        if self.main and cfg.save_final:
            self.model.save_pretrained(self.run_dir / "final", safe_serialization=True)
            self.tokenizer.save_pretrained(self.run_dir / "final")
        if self.main:
            write_json(self.run_dir / "summary.json", summary)
            self.tracker.close()
            from gpo.plots import plot_run

            plot_run(self.run_dir)
        self.acc.wait_for_everyone()
        # Release the DDP wrapper (its reducer holds the process group) while every rank is
        # alive: destroyed later, after a peer has exited, gloo can hang in its destructor.
        self.policy = None
        self.acc.free_memory()
        self.acc.wait_for_everyone()
        self.acc.end_training()
        return summary


def _attach_ref_cache(cfg: TrainConfig, reference: Reference) -> None:
    """Use the on-disk reference log-prob cache (:mod:`gpo.ref_cache`) unless it is off."""
    if cfg.ref_cache == "none":
        return
    from gpo.embedded import cache_root

    root = cache_root() / "ref_logps" if cfg.ref_cache == "auto" else Path(cfg.ref_cache)
    reference.use_cache(root / reference.fingerprint(f"mixed_precision={cfg.mixed_precision}"))


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training as configured; returns the summary also written to ``summary.json``."""
    return Trainer(cfg).run()


def _is_gold(cfg: TrainConfig) -> bool:
    from gpo.data.sources import BUILTIN_NAMES

    return cfg.data in BUILTIN_NAMES and (cfg.eval_data is None or cfg.eval_data in BUILTIN_NAMES)


__all__ = ["Trainer", "TrainingError", "micro_batches", "train"]
