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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gpo.checkpoint import latest_usable_checkpoint, save_checkpoint
from gpo.config import TrainConfig
from gpo.data.collate import collate_pairs
from gpo.data.prepare import PreparedData, prepare_data, prompt_text
from gpo.data.tokenize import Limits, TokenizedPair
from gpo.evaluate import gold_win_rate, on_policy_kl, pair_metrics
from gpo.logps import PolicyLogps, SequenceLogps
from gpo.metrics import concat_values, pair_values, reduce_metrics
from gpo.models import add_lora, disable_dropout, frozen_copy, load_model_and_tokenizer
from gpo.objectives import resolve_objective
from gpo.reference import Reference
from gpo.runs import new_run_dir, print_config, write_json
from gpo.tracking import Tracker

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
}


class TrainingError(RuntimeError):
    """Training cannot go on; the message says at which step and why."""


def micro_batches(
    n: int, global_batch: int, seed: int, start: int
) -> Iterator[tuple[int, list[int]]]:
    """``(micro_step, indices)`` of global batches from micro-step ``start`` on (drop_last)."""
    per_epoch = n // global_batch
    if per_epoch == 0:
        raise ValueError(
            f"only {n} training pairs, fewer than one global batch of {global_batch}; "
            "lower batch_size"
        )
    step = start
    while True:
        epoch, k = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
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
    data = prepare_data(
        cfg.data,
        cfg.split,
        cfg.eval_data,
        cfg.eval_split,
        cfg.eval_fraction,
        tokenizer,
        limits,
        cfg.seed,
    )
    return data


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training as configured; returns the summary also written to ``summary.json``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        # Without cpu=True, Accelerate under torchrun on a CPU-only host runs each process alone.
        cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
    )
    main = accelerator.is_main_process
    run_dir = Path(cfg.out) if cfg.out else None
    if cfg.resume and (run_dir is None or not (run_dir / "config.json").exists()):
        raise ValueError("--resume needs --out pointing at an existing run folder")
    if main:
        run_dir = new_run_dir(cfg.out, "train")
        if cfg.resume:
            _check_resume(run_dir, cfg)
        print_config(cfg)
        write_json(run_dir / "config.json", cfg)
    run_dir = Path(accelerator.gather_for_metrics([str(run_dir)], use_gather_object=True)[0])
    set_seed(cfg.seed)

    model, tokenizer, reference = _build(cfg)
    data = _prepare(cfg, tokenizer)
    if main:
        for report in data.reports:
            print(f"data: {report}")
    objective = resolve_objective(cfg.loss)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * cfg.max_steps),
        num_training_steps=cfg.max_steps,
    )
    policy_logps, optimizer = accelerator.prepare(PolicyLogps(model, cfg.logp_reduction), optimizer)
    unwrapped = accelerator.unwrap_model(policy_logps).model
    if cfg.finetune == "full":
        reference._frozen.to(accelerator.device)  # type: ignore[union-attr]

    start_step = 0
    if cfg.resume:
        state = latest_usable_checkpoint(run_dir, unwrapped, optimizer, scheduler)
        start_step = state["step"] if state else 0
        if main:
            print(f"resuming at step {start_step}" if state else "no usable checkpoint: starting")
    tracker = Tracker(
        run_dir, cfg.report_to, dataclasses.asdict(cfg), enabled=main, truncate_after=start_step
    )

    world, rank, b = accelerator.num_processes, accelerator.process_index, cfg.batch_size
    accum = cfg.gradient_accumulation_steps
    pad = tokenizer.pad_token_id
    batches = micro_batches(len(data.train), b * world, cfg.seed, start_step * accum)
    eval_shard = data.eval[: cfg.eval_max_pairs][rank::world]
    eval_prompts = [p.prompt_ids for p in data.eval[: cfg.kl_prompts]]

    def gather(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: gather_uneven(accelerator, t) for k, t in v.items()}

    def evaluate(step: int) -> dict[str, float]:
        metrics = pair_metrics(
            unwrapped,
            reference,
            objective,
            eval_shard,
            cfg.beta,
            cfg.logp_reduction,
            b,
            pad,
            accelerator.device,
            gather,
        )
        result = {f"eval/{k}": v for k, v in metrics.items()}
        if main and cfg.kl_prompts > 0 and cfg.kl_samples > 0:
            kl, se = on_policy_kl(
                unwrapped,
                reference,
                tokenizer,
                eval_prompts,
                cfg.kl_samples,
                cfg.max_new_tokens,
                seed=cfg.seed + step,
            )
            result.update({"eval/kl": kl, "eval/kl_se": se})
        accelerator.wait_for_everyone()
        return result

    window: list[dict[str, torch.Tensor]] = []
    last: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    bar = tqdm(
        total=cfg.max_steps, initial=start_step, desc="train", disable=not (main and cfg.progress)
    )
    t0 = time.perf_counter()
    policy_logps.train()
    for step in range(start_step + 1, cfg.max_steps + 1):
        for _ in range(accum):
            micro, indices = next(batches)
            pairs: list[TokenizedPair] = [data.train[i] for i in indices[rank * b : (rank + 1) * b]]
            batch = collate_pairs(pairs, pad).to(accelerator.device)
            with accelerator.accumulate(policy_logps):
                policy = SequenceLogps(
                    *policy_logps(
                        batch.input_ids,
                        batch.attention_mask,
                        batch.position_ids,
                        batch.completion_mask,
                    )
                )
                ref = reference.logps(batch, cfg.logp_reduction)
                out = objective(*policy.split(), *ref.split(), cfg.beta)
                loss = out.losses.mean()
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"non-finite loss at step {step} (micro-step {micro}), batch rows "
                        f"{batch.indices.tolist()}; last checkpoint is kept"
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            window.append(gather(pair_values(out, policy, ref, cfg.beta)))
        scheduler.step()
        bar.update(1)
        if step % cfg.logging_steps == 0 or step == cfg.max_steps:
            last = reduce_metrics(concat_values(window))
            last.update(
                learning_rate=scheduler.get_last_lr()[0], epoch=micro * b * world / len(data.train)
            )
            tracker.log(step, last)
            bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['rewards/accuracies']:.2f}")
            window = []
        if cfg.eval_steps > 0 and (step % cfg.eval_steps == 0 or step == cfg.max_steps):
            last_eval = evaluate(step)
            tracker.log(step, last_eval)
        if cfg.save_steps > 0 and step % cfg.save_steps == 0 and step < cfg.max_steps:
            if main:
                save_checkpoint(
                    run_dir,
                    step,
                    unwrapped,
                    optimizer,
                    scheduler,
                    {"config": dataclasses.asdict(cfg)},
                    cfg.save_total_limit,
                )
            accelerator.wait_for_everyone()
    bar.close()
    elapsed = time.perf_counter() - t0

    summary: dict[str, Any] = {
        "train": last,
        "eval": last_eval,
        "steps": cfg.max_steps,
        "train_seconds": elapsed,
        "run_dir": str(run_dir),
    }
    if main and _is_gold(cfg) and cfg.gold_eval_prompts > 0:
        rows = data.eval_rows[: cfg.gold_eval_prompts]
        ids = [p.prompt_ids for p in data.eval[: cfg.gold_eval_prompts]]
        rate, se = gold_win_rate(
            unwrapped,
            reference,
            tokenizer,
            [prompt_text(r) for r in rows],
            ids,
            cfg.max_new_tokens,
            seed=cfg.seed,
        )
        summary.update(gold_win_rate=rate, gold_win_rate_se=se)
        print(f"gold win rate vs reference: {rate:.3f} +- {se:.3f} ({len(ids)} held-out prompts)")
    if main:
        unwrapped.save_pretrained(run_dir / "final", safe_serialization=True)
        tokenizer.save_pretrained(run_dir / "final")
        write_json(run_dir / "summary.json", summary)
        tracker.close()
        from gpo.plots import plot_run

        plot_run(run_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _is_gold(cfg: TrainConfig) -> bool:
    from gpo.data.sources import BUILTIN_NAMES

    return cfg.data in BUILTIN_NAMES and (cfg.eval_data is None or cfg.eval_data in BUILTIN_NAMES)


__all__ = ["TrainingError", "micro_batches", "train"]
