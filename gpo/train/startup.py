"""What `gpo train` prints when it starts: a few lines on what the run does, the data lines, and
the warnings on its settings, once the model and the data are loaded (the full resolved config
goes to ``config.json``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gpo.data.prepare import PreparedData
from gpo.io import redact_urls
from gpo.models.positions import position_limit
from gpo.train.config import TrainConfig, kl_run_length_warning
from gpo.train.setup import is_gold


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
