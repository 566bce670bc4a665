"""Setting up a training run: the model and its reference, the data, the optimizer, the
Accelerator and the data order. The run folder is :mod:`gpo.train.run_folder`, what the run
prints at start :mod:`gpo.train.startup`, the resume check :mod:`gpo.train.resume`; the loop
itself is :mod:`gpo.train.trainer`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gpo.data.builtin import BUILTIN_TASKS, builtin_task
from gpo.data.prepare import PreparedData, prepare_data
from gpo.data.tokenize import Limits, TokenizedPair
from gpo.eval.judges import parse_judge_spec, resolve_judge, task_judge_spec
from gpo.models.embedded import cache_root
from gpo.models.loading import (
    add_lora,
    disable_dropout,
    enable_gradient_checkpointing,
    frozen_copy,
    load_model_and_tokenizer,
)
from gpo.models.positions import resolve_max_length
from gpo.models.reference import Reference
from gpo.models.reference_model import load_reference_model
from gpo.models.tokenizer import set_chat_template
from gpo.train.config import TrainConfig, kl_run_length_warning


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


def precision_warning(cfg: TrainConfig) -> str | None:
    """Full fine-tuning in bf16/fp16 keeps half-precision master weights: an AdamW update below
    half a weight's spacing (2^-9 |w| in bf16, 2^-12 |w| in fp16) rounds to nothing."""
    if cfg.finetune != "full" or cfg.dtype == "float32":
        return None
    tiny = "2^-9" if cfg.dtype == "bfloat16" else "2^-12"
    return (
        f"gpo: warning: full fine-tuning with --dtype {cfg.dtype} keeps {cfg.dtype} weights: "
        f"an update smaller than about {tiny} of a weight rounds to nothing (at learning rate "
        f"{cfg.learning_rate:g} most AdamW updates are that small); for float32 weights with "
        f"{cfg.dtype} compute use --dtype float32 --mixed-precision "
        f"{'bf16' if cfg.dtype == 'bfloat16' else 'fp16'}"
    )


def build_model(cfg: TrainConfig) -> tuple[Any, Any, Reference]:
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.dtype, cfg.trust_remote_code)
    local = Path(model.config._name_or_path).expanduser()
    if local.is_dir():  # PEFT's adapter_config then names the base model from any directory
        model.config._name_or_path = model.name_or_path = str(local.resolve())
    # Resolved here, so config.json records the length used (and a resume reuses it).
    cfg.max_length, _ = resolve_max_length(cfg.max_length, model.config, cfg.model)
    if cfg.chat_template is not None:
        set_chat_template(tokenizer, cfg.chat_template)
    disable_dropout(model)
    frozen = None  # None with LoRA: pi_ref is the policy with its adapters off
    if cfg.ref_model is not None:
        frozen = load_reference_model(
            cfg.ref_model, cfg.model, tokenizer, cfg.dtype, cfg.trust_remote_code
        )
        resolve_max_length(cfg.max_length, frozen.config, cfg.ref_model)  # pi_ref's limit too
    if cfg.finetune == "lora":
        model = add_lora(
            model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules
        )
    elif frozen is None:
        frozen = frozen_copy(model)
    if cfg.gradient_checkpointing:  # after the copy: pi_ref never runs a backward
        enable_gradient_checkpointing(model)
    return model, tokenizer, Reference(model, frozen=frozen)


def prepare(cfg: TrainConfig, tokenizer: Any) -> PreparedData:
    check_task_judges(cfg)
    assert cfg.max_length is not None, "build_model resolves max_length"
    limits = Limits(
        cfg.max_length,
        cfg.max_prompt_length,
        cfg.max_completion_length,
        cfg.prompt_truncation,
        overlong=cfg.overlong,
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
        online=cfg.online,
    )


def accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator

    return Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        # Without cpu=True, Accelerate under torchrun on a CPU-only host runs each process alone.
        cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
    )


def attach_ref_cache(cfg: TrainConfig, reference: Reference) -> None:
    """Use the on-disk reference log-prob cache (:mod:`gpo.models.ref_cache`) unless it is off.
    Online training is always without it: its pairs are new every step, so nothing would hit."""
    if cfg.ref_cache == "none" or cfg.online:
        return
    root = cache_root() / "ref_logps" if cfg.ref_cache == "auto" else Path(cfg.ref_cache)
    # Since pi_ref runs under the policy's autocast, its bf16/fp16 log-probs differ from
    # those cached before; fp32 ones do not, so their key stays.
    precision = f"mixed_precision={cfg.mixed_precision}"
    if cfg.mixed_precision != "no":
        precision += ";ref_under_autocast"
    reference.use_cache(root / reference.fingerprint(precision))


def is_gold(cfg: TrainConfig) -> bool:
    """Trained and evaluated on one built-in task, so its gold judge can score the policy."""
    task = builtin_task(cfg.data)
    return task is not None and builtin_task(cfg.eval_data or cfg.data) == task


def check_task_judges(cfg: TrainConfig) -> None:
    """On a built-in task: build its gold judge now if the run ends with it (a missing optional
    dependency, VADER, fails before training), and refuse a win-rate judge that is another
    task's gold. ``--judge gold`` (the default) means the task's own gold: ``vader`` on the
    sentiment task."""
    task = builtin_task(cfg.data)
    if task is None:
        return
    if is_gold(cfg) and cfg.gold_eval_prompts > 0:
        resolve_judge(task.judge)
    cfg.judge = task_judge_spec(cfg.judge, task.judge)
    name, _ = parse_judge_spec(cfg.judge)
    others = {parse_judge_spec(t.judge)[0] for t in BUILTIN_TASKS.values()}
    others.discard(parse_judge_spec(task.judge)[0])
    if cfg.judge_prompts > 0 and name in others:
        raise ValueError(
            f"--judge {name} is another task's gold; the {task.name} task's is {task.judge}: "
            f"pass --judge {task.judge} (or a model judge)"
        )


def resolve_steps(cfg: TrainConfig, n_train: int, num_processes: int) -> None:
    """``max_steps`` from ``num_epochs`` once the training pairs are counted; a KL target on a
    run too short to steer is refused (:func:`gpo.train.config.kl_run_length_warning`)."""
    if cfg.num_epochs is not None:
        global_batch = cfg.batch_size * num_processes * cfg.gradient_accumulation_steps
        cfg.max_steps = max(1, math.ceil(cfg.num_epochs * n_train / global_batch))
    if cfg.kl_target is not None:
        kl_run_length_warning(cfg)


def pair_tokens(p: TokenizedPair) -> int:
    """Tokens of a pair as trained on: prompt and both responses."""
    return len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids)
