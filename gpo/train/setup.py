"""Setting up a training run: the model and its reference, the data, the optimizer, the
Accelerator, the data order, and the resume check. The loop itself is :mod:`gpo.train.trainer`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import torch

from gpo.data.prepare import PreparedData, prepare_data
from gpo.data.sources import BUILTIN_NAMES
from gpo.data.tokenize import Limits, TokenizedPair
from gpo.io import redact_urls
from gpo.models.embedded import cache_root
from gpo.models.loading import add_lora, disable_dropout, frozen_copy, load_model_and_tokenizer
from gpo.models.reference import Reference
from gpo.train.config import TrainConfig, saved_config
from gpo.train.guards import writable_run_dir

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
    "flush_denormals",  # changes only values below 1.2e-38, which no AdamW step can see
    "num_epochs",
    "overwrite",
    "max_padding",  # length groups change only the float summation order, not the step
}


def _as_saved_before(key: str, saved: dict[str, Any]) -> Any:
    """The value a run saved before ``key`` existed ran with: its default, except where the
    default changed the behaviour (the LR brake did not exist: gain 0)."""
    if key == "kl_lr_gain" and saved.get("kl_target") is not None:
        return 0.0
    spec = TrainConfig.__dataclass_fields__[key]
    return spec.default_factory() if spec.default is MISSING else spec.default  # type: ignore[misc]


#: What ``gpo train`` writes into a run folder: any of them there means it already holds a run.
RUN_OUTPUTS = (
    "config.json",
    "metrics.jsonl",
    "summary.json",
    "checkpoints",
    "final",
    ".tmp-final",
    "samples",
    "tensorboard",
    "wandb",
    "training.png",
    "kl_vs_mu_sq.png",
)


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


def check_resume(run_dir: Path, cfg: TrainConfig) -> None:
    saved = json.loads((run_dir / "config.json").read_text())
    now = saved_config(cfg)  # compared as saved: secrets in URLs are redacted in both
    saved = {k: saved[k] if k in saved else _as_saved_before(k, saved) for k in now}
    differ = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved[k] != now[k])
    if differ:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in differ)
        raise ValueError(f"refusing to resume {run_dir}: config differs ({detail})")
    old = saved.get("max_steps")
    if old != cfg.max_steps and (cfg.lr_scheduler != "constant" or cfg.warmup_ratio > 0):
        print(
            f"gpo: max_steps changed from {old} to {cfg.max_steps} on resume: the "
            f"{cfg.lr_scheduler} learning-rate schedule (and its warm-up) now spans "
            f"{cfg.max_steps} steps, continued from the checkpoint's step"
        )


def previous_run(out: Path) -> list[str]:
    """The run outputs (:data:`RUN_OUTPUTS`) already in folder ``out``."""
    return [name for name in RUN_OUTPUTS if (out / name).exists()]


def refuse_or_clear_old_run(cfg: TrainConfig) -> None:
    """A fresh run never writes over another run's files: those would mix with its own (old
    checkpoints rotate out the new ones, a later --resume loads another config's weights).
    ``overwrite`` deletes them first; other files in the folder are left alone."""
    if cfg.out is None or cfg.resume:
        return
    out = Path(cfg.out)
    found = previous_run(out)
    if not found:
        return
    if not cfg.overwrite:
        raise ValueError(
            f"run folder {out} already holds a run ({', '.join(found)}): continue it with "
            "--resume, pass --overwrite to delete it and start again, or choose another --out"
        )
    for name in found:
        path = out / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    print(f"gpo: --overwrite: deleted the previous run's {', '.join(found)} in {out}")


def open_run_dir(cfg: TrainConfig, main: bool) -> tuple[Path | None, bool]:
    """The run folder, on the main process (None elsewhere), made writable and checked against
    an earlier run there; and whether this run created it. ``config.json`` comes later, once
    setup succeeds."""
    if cfg.resume and cfg.out is None:
        raise ValueError("--resume needs --out: the run folder to continue")
    resumable = cfg.resume and (Path(cfg.out or "") / "config.json").exists()
    if cfg.resume and not resumable:  # e.g. a requeued job that died while starting
        cfg.resume = False
        if main:
            print(f"gpo: nothing to resume in {cfg.out}: starting the run from scratch")
    if not main:
        return None, False
    refuse_or_clear_old_run(cfg)
    created = cfg.out is None or not Path(cfg.out).exists()
    run_dir = writable_run_dir(cfg.out, "train")
    if cfg.resume:
        check_resume(run_dir, cfg)
    print(startup_summary(cfg, run_dir))
    return run_dir, created


def build_model(cfg: TrainConfig) -> tuple[Any, Any, Reference]:
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.dtype, cfg.trust_remote_code)
    local = Path(model.config._name_or_path).expanduser()
    if local.is_dir():  # PEFT's adapter_config then names the base model from any directory
        model.config._name_or_path = model.name_or_path = str(local.resolve())
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and cfg.max_length > positions:
        raise ValueError(
            f"config: max_length = {cfg.max_length} is more than model {cfg.model}'s "
            f"max_position_embeddings ({positions}); lower --max-length"
        )
    disable_dropout(model)
    if cfg.finetune == "lora":
        model = add_lora(
            model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules
        )
        return model, tokenizer, Reference(model)
    return model, tokenizer, Reference(model, frozen=frozen_copy(model))


def prepare(cfg: TrainConfig, tokenizer: Any) -> PreparedData:
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
    """Use the on-disk reference log-prob cache (:mod:`gpo.models.ref_cache`) unless it is off."""
    if cfg.ref_cache == "none":
        return
    root = cache_root() / "ref_logps" if cfg.ref_cache == "auto" else Path(cfg.ref_cache)
    # Since pi_ref runs under the policy's autocast, its bf16/fp16 log-probs differ from
    # those cached before; fp32 ones do not, so their key stays.
    precision = f"mixed_precision={cfg.mixed_precision}"
    if cfg.mixed_precision != "no":
        precision += ";ref_under_autocast"
    reference.use_cache(root / reference.fingerprint(precision))


def is_gold(cfg: TrainConfig) -> bool:
    return cfg.data in BUILTIN_NAMES and (cfg.eval_data is None or cfg.eval_data in BUILTIN_NAMES)


def startup_summary(cfg: TrainConfig, run_dir: Path) -> str:
    """A few lines on what this run does (the full resolved config goes to config.json)."""
    tune = f"LoRA r {cfg.lora_r}" if cfg.finetune == "lora" else "full fine-tuning"
    steps = f"{cfg.num_epochs:g} epoch(s)" if cfg.num_epochs else f"{cfg.max_steps} steps"
    if cfg.eval_schedule is None and cfg.eval_steps == 0:
        evals = "no evaluation (eval_steps 0)"
    else:
        evals = f"eval {cfg.eval_schedule or f'every {cfg.eval_steps} steps'}: "
        evals += f"{cfg.eval_max_pairs} held-out pairs"
        if cfg.kl_prompts and cfg.kl_samples:
            evals += f", KL on {cfg.kl_prompts} prompts x {cfg.kl_samples} samples"
    if cfg.judge_prompts:
        evals += f", {redact_urls(cfg.judge)} win rate on {cfg.judge_prompts} prompts"
    if is_gold(cfg) and cfg.gold_eval_prompts:
        evals += f"; final gold win rate on {cfg.gold_eval_prompts} prompts"
    beta = f"beta {cfg.beta:g}"
    if cfg.kl_target is not None:
        beta += (
            f" steered to KL {cfg.kl_target:g} nats, measured every {cfg.kl_control_steps} steps"
        )
    lines = [
        f"gpo train: {cfg.loss} ({beta}) on {cfg.data}, model {cfg.model} ({tune})",
        f"  {steps} x {cfg.batch_size} pairs, lr {cfg.learning_rate:g} ({cfg.lr_scheduler}), "
        f"seed {cfg.seed}" + (", resuming" if cfg.resume else ""),
        f"  {evals}",
        f"  run folder {run_dir} (full config: config.json)",
    ]
    return "\n".join(lines)


def pair_tokens(p: TokenizedPair) -> int:
    """Tokens of a pair as trained on: prompt and both responses."""
    return len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids)
