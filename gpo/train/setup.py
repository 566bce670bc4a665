"""Setting up a training run: the model and its reference, the data, the optimizer, the
Accelerator, the data order, and the resume check. The loop itself is :mod:`gpo.train.trainer`."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gpo.data.builtin import BUILTIN_TASKS, builtin_task
from gpo.data.prepare import PreparedData, prepare_data
from gpo.data.tokenize import Limits, TokenizedPair
from gpo.eval.judges import parse_judge_spec, resolve_judge, task_judge_spec
from gpo.io import redact_urls, write_json
from gpo.models.embedded import cache_root
from gpo.models.loading import (
    add_lora,
    disable_dropout,
    enable_gradient_checkpointing,
    frozen_copy,
    load_model_and_tokenizer,
)
from gpo.models.positions import position_limit, resolve_max_length
from gpo.models.reference import Reference
from gpo.models.reference_model import load_reference_model
from gpo.models.tokenizer import set_chat_template
from gpo.train.config import TrainConfig, kl_run_length_warning, saved_config
from gpo.train.guards import writable_run_dir
from gpo.train.resume import DATA_FINGERPRINT, check_config, nothing_to_resume
from gpo.train.run_record import RECORD, delete_recorded, output, recorded, recorded_outputs

#: Names ``gpo train`` writes into a run folder: in a folder without a run record
#: (:mod:`gpo.train.run_record`) they are someone else's files, never written over or deleted.
RUN_OUTPUTS = (
    "config.json",
    "metrics.jsonl",
    "online_pairs.jsonl",
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


def _in_usual_order(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: RUN_OUTPUTS.index(n) if n in RUN_OUTPUTS else 99)


def check_old_run(cfg: TrainConfig) -> None:
    """A fresh run never writes over another run's files: those would mix with its own (old
    checkpoints rotate out the new ones, a later --resume loads another config's weights).
    ``overwrite`` deletes a gpo run's recorded files, later (:func:`clear_old_run`), once the new
    run has passed every check; a folder with such names but no record is refused either way."""
    if cfg.out is None or cfg.resume:
        return
    out = Path(cfg.out)
    found = _in_usual_order(recorded_outputs(out))
    if recorded(out) is not None:
        if found and not cfg.overwrite:
            raise ValueError(
                f"run folder {out} already holds a run ({', '.join(found)}): continue it with "
                "--resume, pass --overwrite to delete it and start again, or choose another --out"
            )
        return
    foreign = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if not foreign:
        return
    if (out / "config.json").is_file():
        raise ValueError(
            f"run folder {out} holds a run without a record of its files ({', '.join(foreign)}; "
            f"written before gpo kept {RECORD}): continue it with --resume, or choose another "
            "--out (--overwrite deletes only files a run recorded)"
        )
    raise ValueError(
        f"run folder {out} has {', '.join(foreign)}, which no gpo run recorded writing "
        f"(no {RECORD}): gpo neither writes into nor deletes them; choose another --out"
    )


def clear_old_run(cfg: TrainConfig, run_dir: Path) -> None:
    """With ``overwrite``: delete what the earlier run recorded writing; other files stay."""
    if cfg.resume or not cfg.overwrite or recorded(run_dir) is None:
        return
    deleted = _in_usual_order(delete_recorded(run_dir))
    if deleted:
        print(
            f"gpo: --overwrite: deleted the previous run's {', '.join(deleted)} in {run_dir} "
            "(files it did not write stay)"
        )


def start_writing(cfg: TrainConfig, run_dir: Path, fingerprint: str) -> None:
    """Clear an earlier run (``--overwrite``), then record exactly what this run runs."""
    clear_old_run(cfg, run_dir)
    saved = {**saved_config(cfg), DATA_FINGERPRINT: fingerprint}
    write_json(output(run_dir, "config.json"), saved)


def open_run_dir(cfg: TrainConfig, main: bool) -> tuple[Path | None, bool]:
    """The run folder, on the main process (None elsewhere), made writable and checked against
    an earlier run there; and whether this run created it. Nothing is written into it until the
    run passed every check (:meth:`gpo.train.trainer.Trainer._start_writing`)."""
    if nothing_to_resume(cfg):
        cfg.resume = False
        if main:
            print(f"gpo: nothing to resume in {cfg.out}: starting the run from scratch")
    if not main:
        return None, False
    check_old_run(cfg)
    created = cfg.out is None or not Path(cfg.out).exists()
    run_dir = writable_run_dir(cfg.out, "train")
    if cfg.resume:
        check_config(run_dir, cfg)
    return run_dir, created


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


def announce(cfg: TrainConfig, run_dir: Path, data: PreparedData, model_config: Any) -> None:
    """The start-up summary, the data lines and the warnings on the settings, once the model and
    the data are loaded, so every number in them is the run's own."""
    print(startup_summary(cfg, run_dir, data, position_limit(model_config)))
    for report in data.reports:
        print(f"data: {report}")
        if warning := report.unknown_warning():
            print(f"gpo: warning: {warning}", file=sys.stderr)
    if cfg.kl_target is not None and (warning := kl_run_length_warning(cfg)):
        print(warning, file=sys.stderr)


def _evals(cfg: TrainConfig, n_eval: int, pairs: bool = True) -> str:
    """What each evaluation does, with the counts the held-out set allows (``pairs`` false:
    prompt-only held-out rows, no pair metrics)."""
    if n_eval == 0:
        return "no evaluation (no held-out pairs)"
    if cfg.eval_schedule is None and cfg.eval_steps == 0:
        return "no evaluation (eval_steps 0)"
    if cfg.eval_schedule is not None:
        evals = f"eval {cfg.eval_schedule}: "
    elif cfg.eval_steps >= cfg.max_steps:
        evals = f"eval at the end only (eval_steps {cfg.eval_steps} >= max_steps {cfg.max_steps}): "
    else:
        evals = f"eval every {cfg.eval_steps} steps and at the end: "
    if pairs:
        evals += plural(min(cfg.eval_max_pairs, n_eval), "held-out pair")
    else:
        evals += "no held-out pair metrics (prompt-only data)"
    if cfg.kl_prompts and cfg.kl_samples:
        evals += f", KL on {plural(min(cfg.kl_prompts, n_eval), 'prompt')} x {cfg.kl_samples}"
        evals += " samples" if cfg.kl_samples > 1 else " sample"
    if cfg.judge_prompts:
        n = min(cfg.judge_prompts, n_eval)
        evals += f", {redact_urls(cfg.judge)} win rate on {plural(n, 'prompt')}"
    if is_gold(cfg) and cfg.gold_eval_prompts:
        n = min(cfg.gold_eval_prompts, n_eval)
        evals += f"; final gold win rate on {plural(n, 'prompt')}"
    return evals


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def startup_summary(
    cfg: TrainConfig,
    run_dir: Path,
    data: PreparedData,
    limit: tuple[str, int] | None = None,
) -> str:
    """A few lines on what this run does (the full resolved config goes to config.json)."""
    tune = f"LoRA r {cfg.lora_r}" if cfg.finetune == "lora" else "full fine-tuning"
    tune += ", gradient checkpointing" if cfg.gradient_checkpointing else ""
    tune += f", pi_ref {cfg.ref_model}" if cfg.ref_model is not None else ""
    steps = plural(cfg.max_steps, "step")
    if cfg.num_epochs:
        steps = f"{cfg.num_epochs:g} epoch(s) = {steps}"
    length = f"max_length {cfg.max_length}"
    if limit is not None:
        length += f" (model's {limit[0]} {limit[1]})"
    beta = f"beta {cfg.beta:g}"
    if cfg.kl_target is not None:
        beta += (
            f" steered to KL {cfg.kl_target:g} nats, measured every {cfg.kl_control_min_steps}"
            f"-{cfg.kl_control_steps} steps"
        )
    online = f", online (judge {redact_urls(cfg.online_judge)}, {cfg.online_labels} labels)"
    online = online if cfg.online else ""
    lines = [
        f"gpo train: {cfg.loss} ({beta}) on {cfg.data}{online}, model {cfg.model} ({tune})",
        f"  {steps} x {plural(cfg.batch_size, 'pair')}, {length}, lr {cfg.learning_rate:g} "
        f"({cfg.lr_scheduler}), seed {cfg.seed}" + (", resuming" if cfg.resume else ""),
        f"  {_evals(cfg, len(data.eval), data.eval_pairs)}",
        f"  run folder {run_dir} (full config: config.json)",
    ]
    return "\n".join(lines)


def pair_tokens(p: TokenizedPair) -> int:
    """Tokens of a pair as trained on: prompt and both responses."""
    return len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids)
