"""gpo vs TRL (``vs_trl.py``): the child processes, one tool and one round each, and the
spec they are started with. Each child trains, records the end time of every optimiser step,
its per-step losses and its peak RSS, and writes them to its ``result`` file."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vs_trl_workload import SEED, token_digest

BETA = 0.1


def train_only() -> dict[str, Any]:
    """gpo options of a benchmarked run: every step logged; no evaluation, checkpoint, final
    save, tracker or progress bar."""
    return {
        "logging_steps": 1,
        "eval_steps": 0,
        "kl_prompts": 0,
        "gold_eval_prompts": 0,
        "save_steps": 0,
        "save_final": False,
        "report_to": ["none"],
        "progress": False,
    }


LORA_R, LORA_ALPHA, LORA_DROPOUT, LORA_TARGETS = 16, 32, 0.0, "all-linear"
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


@dataclasses.dataclass
class ChildSpec:
    """What one child process trains (written as JSON, read back by the child)."""

    tool: str
    model_dir: str
    data: str  # gpo: rows in source order; TRL: the same rows in gpo's batch order
    n_rows: int
    batch_size: int  # pairs per optimizer step
    warmup: int
    steps: int
    learning_rate: float
    lora: bool
    work_dir: str
    result: str
    gpo_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    trl_reuse_host_memory: bool = False  # give TRL gpo's malloc setting (gpo.train.host_memory)
    trl_padding_free: bool = False  # ask TRL for padding_free (1.16 turns it off again)
    precision: str = "fp32"  # or "bf16": TRL bf16=True, gpo mixed_precision=bf16
    cross_entropy_head: bool = False  # gpo: torch's cross_entropy for the head (techniques.py)
    grad_accum: int = 1  # micro-batches of batch_size / grad_accum pairs per step, both tools


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _use_cross_entropy_head() -> None:
    """Token log-probs by ``-cross_entropy`` (gpo before ``_TargetLogProb``), to measure it."""
    import torch.nn.functional as F

    import gpo.models.logps

    class CrossEntropy:
        @staticmethod
        def apply(logits: Any, targets: Any) -> Any:
            return -F.cross_entropy(logits, targets, reduction="none")

    gpo.models.logps._TargetLogProb = CrossEntropy  # type: ignore[assignment,misc]


def max_positions(path: str) -> int:
    """The model's ``max_position_embeddings``: gpo refuses a larger ``max_length``."""
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", 100_000))


def run_gpo_child(spec: ChildSpec) -> dict[str, Any]:
    from gpo.train.config import TrainConfig
    from gpo.train.tracking import read_metrics
    from gpo.train.trainer import Trainer

    class TimedTrainer(Trainer):
        """Records the end time of every optimiser step's last micro-step (the optimizer steps
        inside it); skips the final model save and plots, which TRL's run does not do either."""

        step_ends: list[float]

        def _micro_step(self, step: int, micro: int, indices: list[int]) -> Any:
            out = super()._micro_step(step, micro, indices)
            if (micro + 1) % spec.grad_accum == 0:
                self.step_ends.append(time.perf_counter())
            return out

        def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
            self.tracker.close()
            self.acc.end_training()
            return summary

    cfg = TrainConfig(
        model=spec.model_dir,
        data=spec.data,
        eval_data=spec.data,  # set so that no training row is held out; never evaluated
        eval_split=None,
        loss="logistic",
        beta=BETA,
        finetune="lora" if spec.lora else "full",
        lora_r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        lora_target_modules=LORA_TARGETS,
        max_length=max_positions(spec.model_dir),  # no row is cut or dropped (checked)
        max_steps=spec.warmup + spec.steps,
        batch_size=spec.batch_size // spec.grad_accum,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.learning_rate,
        weight_decay=0.0,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        max_grad_norm=1.0,
        seed=SEED,
        out=str(Path(spec.work_dir) / "run"),
        **train_only(),
        ref_cache="none",  # TRL computes pi_ref every step; --gpo-option ref_cache=DIR to cache
        mixed_precision="bf16" if spec.precision == "bf16" else "no",
    )
    cfg = dataclasses.replace(cfg, **spec.gpo_options)
    if spec.cross_entropy_head:
        _use_cross_entropy_head()
    trainer = TimedTrainer(cfg)
    trainer.step_ends = []
    train = trainer.data.train
    if len(train) != spec.n_rows or any(p.index != i for i, p in enumerate(train)):
        raise RuntimeError(f"gpo kept {len(train)} of {spec.n_rows} rows, or reordered them")
    trainer.run()
    losses = [r["loss"] for r in read_metrics(trainer.run_dir) if "loss" in r]
    return {
        "step_ends": trainer.step_ends,
        "losses": losses,
        "peak_rss_mb": _peak_rss_mb(),
        "settings": {"optim": cfg.optim, "max_padding": getattr(cfg, "max_padding", None)},
    }


def run_trl_child(spec: ChildSpec) -> dict[str, Any]:
    import datasets
    import torch
    from accelerate.utils import set_seed
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from gpo.models.loading import add_lora, disable_dropout, load_model_and_tokenizer

    step_ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step_ends.append(time.perf_counter())

    if spec.trl_reuse_host_memory:
        from gpo.train.host_memory import reuse_freed_memory

        reuse_freed_memory()
    # the same calls, in the same order after the same seed, as gpo's Trainer (LoRA init matches)
    set_seed(SEED)
    model, tokenizer = load_model_and_tokenizer(spec.model_dir, "float32")
    disable_dropout(model)
    ref_model = None
    if spec.lora:
        model = add_lora(model, LORA_R, LORA_ALPHA, LORA_DROPOUT, LORA_TARGETS)
    else:
        ref_model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=torch.float32)
    rows = [json.loads(line) for line in Path(spec.data).read_text().splitlines() if line]
    args = DPOConfig(
        output_dir=str(Path(spec.work_dir) / "trl_out"),
        per_device_train_batch_size=spec.batch_size // spec.grad_accum,
        gradient_accumulation_steps=spec.grad_accum,
        max_steps=spec.warmup + spec.steps,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        loss_type=["sigmoid"],
        beta=BETA,
        max_length=None,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        bf16=spec.precision == "bf16",  # DPOConfig's default is True (autocast, on CPU too)
        fp16=False,
        padding_free=spec.trl_padding_free,
        activation_checkpointing=False,  # DPOConfig defaults to gradient checkpointing
        disable_dropout=True,
        precompute_ref_log_probs=False,
        use_cpu=True,
        seed=SEED,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    optim = str(getattr(trainer.args.optim, "value", trainer.args.optim))
    if trainer.args.activation_checkpointing or trainer.args.bf16 != (spec.precision == "bf16"):
        raise RuntimeError("TRL config: checkpointing is on, or bf16 is not as asked")
    if optim != "adamw_torch_fused":
        raise RuntimeError(f"TRL's optimizer is {optim}, not its default adamw_torch_fused")
    ds = trainer.train_dataset
    ids = zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True)
    digest = token_digest(list(ids))
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e and "train_loss" not in e]
    return {
        "step_ends": step_ends,
        "losses": [float(e["loss"]) for e in sorted(logged, key=lambda e: e["step"])],
        "peak_rss_mb": _peak_rss_mb(),
        "token_digest": digest,
        "settings": {
            "optim": optim,
            "bf16": bool(trainer.args.bf16),
            "reuse_host_memory": spec.trl_reuse_host_memory,
            "padding_free_asked": spec.trl_padding_free,
            "padding_free_kept": bool(getattr(trainer, "padding_free", False)),
        },
    }


def child_main(spec_path: str) -> None:
    spec = ChildSpec(**json.loads(Path(spec_path).read_text()))
    t0 = time.perf_counter()
    result = (run_gpo_child if spec.tool == "gpo" else run_trl_child)(spec)
    result["child_wall_s"] = time.perf_counter() - t0
    Path(spec.result).write_text(json.dumps(result))


def run_script_child(
    script: str, spec: Any, spec_path: Path, log: Path, what: str
) -> dict[str, Any]:
    """Run ``script --child spec_path`` (``spec``, a dataclass with a ``result`` path, written
    there first) in a fresh process with :data:`CHILD_ENV`; its output goes to ``log``."""
    spec_path.write_text(json.dumps(dataclasses.asdict(spec)))
    env = {**os.environ, **CHILD_ENV}
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, str(Path(script).resolve()), "--child", str(spec_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(Path(spec.result).read_text())
