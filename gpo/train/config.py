"""The training config: one dataclass, from which the YAML schema and the CLI flags are derived."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gpo.io import REDACTED, read_yaml_mapping, redact_urls
from gpo.losses.family import canonical_loss_name
from gpo.train.schedule import parse_schedule
from gpo.train.trl_config import from_trl, suggest, trl_names

#: The default learning rate per fine-tuning mode: LoRA's adapters start at zero and need a large
#: step; every weight of a pretrained model needs a small one (TRL's DPO default is 1e-6, the
#: GPO paper's runs use 1e-5 and 3e-5).
DEFAULT_LEARNING_RATE = {"lora": 1e-3, "full": 1e-5}


@dataclass
class TrainConfig:
    # what to train
    model: str = (
        "smollm2"  # HF name or local folder; 'smollm2' = the embedded SmolLM2-135M-Instruct
    )
    data: str = "gold"  # file, saved dataset, hub name, or 'gold' (the built-in gold task)
    split: str = "train"  # the split of `data` to train on
    eval_data: str | None = None  # default: `data` with `eval_split`, else a held-out fraction
    eval_split: str | None = "test"  # the split of `data` to evaluate on, if it has one
    eval_fraction: float = 0.05  # held out from `data` when there is no eval split; 0: no eval
    loss: str = "logistic"  # a GPO loss, 'fdpo:js', 'iupo:js', ... or 'pkg.module:func'
    beta: float = 0.1  # the loss is f(beta * rho): larger beta, stronger regularization
    logp_reduction: Literal["sum", "mean"] = "sum"  # 'mean' = per-token mean (TRL's IPO)
    # online training (docs/online.md): each step's pairs sampled from the policy, then judged
    online: bool = False  # sample 2 completions per prompt each step, judge them, train on them
    online_judge: str = "gold"  # labels online pairs: a --judge spec, or 'pkg.module:func'
    online_labels: Literal["hard", "soft"] = "hard"  # hard: winner drawn; soft: both orders
    online_mixture: float = 0.0  # IPO-MD: sample from pi_theta^(1-A) pi_ref^A (0: the policy)
    # KL-targeted training (docs/kl-control.md): beta is then the starting value
    kl_target: float | None = None  # nats of KL(pi_theta || pi_ref) to steer beta towards
    kl_control_steps: int = 10  # most optimizer steps between KL measurements (when settled)
    kl_control_min_steps: int = 2  # fewest steps between KL measurements (while the KL moves)
    kl_control_prompts: int = 16  # held-out prompts per kl_control_steps of measuring
    kl_tolerance: float = 0.25  # relative band around kl_target that counts as met
    kl_rollback: bool = True  # overshoot: back to the newest state below the target
    kl_control_signal: Literal["proxy", "sampled"] = "proxy"  # or only the sampled KLs
    kl_ramp: float = 0.5  # share of max_steps over which the aimed-at KL rises to kl_target
    kl_gain_i: float = 0.3  # integral gain on log beta per measurement
    kl_gain_p: float = 0.5  # proportional-on-change gain (damping)
    kl_beta_min: float = 1e-3  # lower bound on the steered beta
    kl_beta_max: float = 1e3  # upper bound on the steered beta
    kl_lr_gain: float = 1.0  # LR brake: integral gain on log(lr scale) above kl_target; 0 = off
    # model options
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights are loaded in this
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast (Accelerate)
    trust_remote_code: bool = False  # run the model repo's own Python code (only if trusted)
    chat_template: str | None = None  # a Jinja file set as the tokenizer's chat_template
    finetune: Literal["lora", "full"] = "lora"  # LoRA adapters, or every weight
    gradient_checkpointing: bool = False  # recompute activations in the backward: less memory
    ref_model: str | None = None  # pi_ref: a model or LoRA adapter folder; None: `model` itself
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scale numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA input
    lora_target_modules: str = "all-linear"  # PEFT target_modules (comma-separated names)
    # data shaping
    max_length: int | None = None  # tokens per prompt + completion; None: min(1024, model's limit)
    overlong: Literal["drop", "truncate"] = "drop"  # a pair over max_length: drop it, or cut it
    max_prompt_length: int | None = None  # tokens; longer prompts are truncated
    max_completion_length: int | None = None  # tokens; longer responses keep their start
    prompt_truncation: Literal["keep_end", "keep_start"] = "keep_end"  # which part is kept
    share_prompt: bool = True  # run each prompt once for both responses (prefix sharing)
    max_padding: float = 0.1  # share of padding allowed per forward; more: split by length
    ref_cache: str = "auto"  # pi_ref log-probs on disk: 'auto' ($GPO_CACHE_DIR), 'none', a folder
    # optimisation
    max_steps: int = 30  # the default run: a few minutes on 2 CPU cores
    num_epochs: float | None = None  # set: max_steps = this many passes over the training pairs
    batch_size: int = 8  # pairs per process per micro-step
    shuffle: bool = True  # False: every epoch in source order
    gradient_accumulation_steps: int = 1  # micro-steps per optimizer step
    learning_rate: float | None = None  # None: 1e-3 with LoRA, 1e-5 with full fine-tuning
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    warmup_ratio: float = 0.1  # share of max_steps with a linearly rising learning rate
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"  # decay after warm-up
    max_grad_norm: float = 1.0  # gradient-norm clipping; 0: none
    optim: Literal["adamw_fused", "adamw"] = "adamw_fused"  # 'adamw': torch's default AdamW
    reuse_host_memory: bool = True  # keep freed host memory for the next step (glibc malloc)
    flush_denormals: bool = True  # CPU: values below 1.2e-38 count as 0 (denormal math is slow)
    on_nonfinite: Literal["stop", "skip"] = "stop"  # inf/NaN loss or gradients: stop, or skip
    seed: int = 0  # data order, initialisation, sampling
    # logging, evaluation, checkpoints
    out: str | None = None  # run folder; default runs/train-<timestamp>
    logging_steps: int = 5  # optimizer steps per logged mean of the train metrics
    eval_steps: int = 15  # evaluate every N optimizer steps (and at the end); 0: never
    eval_schedule: str | None = None  # "200:2000,2000": overrides eval_steps (gpo/schedule.py)
    eval_max_pairs: int = 64  # held-out pairs scored at each eval
    kl_prompts: int = 8  # on-policy KL: held-out prompts sampled at each eval
    kl_samples: int = 2  # completions per prompt
    kl_estimator: Literal["sample", "token"] = "sample"  # token: exact next-token KLs, less noise
    max_new_tokens: int = 48  # for KL and gold win-rate sampling
    gold_eval_prompts: int = 128  # held-out prompts for the final gold win rate (gold data only)
    judge_prompts: int = 0  # held-out prompts judged at every eval (0: no per-eval win rate)
    judge: str = "gold"  # win-rate judge (gpo.eval.judges.JUDGES); gold: the built-in task's own
    opponent: str | None = None  # win-rate opponent: None = pi_ref, else a saved policy folder
    save_steps: int = 100  # checkpoint every N optimizer steps; 0: never
    save_total_limit: int = 2  # newest checkpoints kept (older ones deleted); 0: all
    resume: bool = False  # continue from the newest complete checkpoint in `out`
    overwrite: bool = False  # delete an earlier run's files in `out` and start again
    save_final: bool = True  # write final/ (the trained model or adapter)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # or wandb, none
    run_name: str | None = None  # the W&B run's name; default: the run folder's name
    wandb_project: str | None = None  # default: $WANDB_PROJECT, else 'gpo'
    wandb_entity: str | None = None  # default: $WANDB_ENTITY, else your W&B default
    progress: bool = True  # a progress bar

    def __post_init__(self) -> None:
        _check_types(self)
        self.loss = canonical_loss_name(self.loss)  # 'dpo' runs and reports as 'logistic'
        if self.learning_rate is None:  # resolved here, so config.json records what was used
            self.learning_rate = DEFAULT_LEARNING_RATE[self.finetune]
        _check_ranges(self)
        if self.eval_schedule is not None:
            parse_schedule(self.eval_schedule)  # a malformed schedule fails here, not mid-run
        if self.kl_target is not None:
            _check_kl_control(self)
        if self.online:
            _check_online(self)
        else:
            _check_offline(self)
        if self.resume and self.overwrite:
            raise ValueError("config: resume and overwrite contradict each other: pass one")
        unknown = set(self.report_to) - {"tensorboard", "wandb", "none"}
        if unknown:
            raise ValueError(f"config: report_to has unknown entries {sorted(unknown)}")


#: The most nats per sampled token a KL target may ask for. The KL is measured on completions of
#: at most ``max_new_tokens`` tokens, and a policy 10 nats per token from pi_ref samples only
#: tokens pi_ref gives probability about e^-10 = 5e-5: nothing of pi_ref is left for any beta to
#: hold on to, so no fixed beta means such a target (beta -> 0 is no regularization at all).
KL_PER_TOKEN_MAX = 10.0


def kl_target_max(cfg: TrainConfig) -> float:
    """The largest ``kl_target`` accepted: :data:`KL_PER_TOKEN_MAX` x ``max_new_tokens``."""
    return KL_PER_TOKEN_MAX * cfg.max_new_tokens


def range_checks(cfg: TrainConfig) -> dict[str, tuple[bool, str]]:
    """Each range-checked field: whether it is in range, and the range as errors state it."""
    return {
        "max_steps": (cfg.max_steps > 0, ">= 1"),
        "batch_size": (cfg.batch_size > 0, ">= 1"),
        "gradient_accumulation_steps": (cfg.gradient_accumulation_steps > 0, ">= 1"),
        "logging_steps": (cfg.logging_steps > 0, ">= 1"),
        "eval_fraction": (0 <= cfg.eval_fraction < 1, "in [0, 1)"),
        "num_epochs": (
            cfg.num_epochs is None or 0 < cfg.num_epochs < math.inf,
            "None or finite and > 0",
        ),
        "warmup_ratio": (0 <= cfg.warmup_ratio < 1, "in [0, 1)"),
        "max_grad_norm": (0 <= cfg.max_grad_norm < math.inf, "finite and >= 0 (0: none)"),
        "beta": (0 < cfg.beta < math.inf, "finite and > 0"),
        "learning_rate": (0 < cfg.learning_rate < math.inf, "finite and > 0"),
        "weight_decay": (0 <= cfg.weight_decay < math.inf, "finite and >= 0"),
        "judge_prompts": (cfg.judge_prompts >= 0, ">= 0"),
        "lora_r": (cfg.lora_r > 0, ">= 1"),
        "lora_dropout": (0 <= cfg.lora_dropout < 1, "in [0, 1)"),
        "max_padding": (0 <= cfg.max_padding <= 1, "in [0, 1]"),
        "max_length": (
            cfg.max_length is None or cfg.max_length >= 2,
            "None (min(1024, the model's limit)) or >= 2",
        ),
        "kl_target": (
            cfg.kl_target is None or 0 < cfg.kl_target <= kl_target_max(cfg),
            f"None or in (0, {kl_target_max(cfg):g}] nats ({KL_PER_TOKEN_MAX:g} per "
            f"token of max_new_tokens {cfg.max_new_tokens}; docs/kl-control.md)",
        ),
        "kl_control_steps": (cfg.kl_control_steps > 0, ">= 1"),
        "kl_control_min_steps": (
            0 < cfg.kl_control_min_steps <= cfg.kl_control_steps,
            f"in [1, kl_control_steps = {cfg.kl_control_steps}]",
        ),
        "kl_tolerance": (0 < cfg.kl_tolerance < 1, "in (0, 1)"),
        "online_mixture": (0 <= cfg.online_mixture < 1, "in [0, 1)"),
        "kl_control_prompts": (cfg.kl_control_prompts > 0, ">= 1"),
        "kl_ramp": (0 <= cfg.kl_ramp <= 1, "in [0, 1]"),
        "kl_gain_i": (0 <= cfg.kl_gain_i < math.inf, "finite and >= 0"),
        "kl_gain_p": (0 <= cfg.kl_gain_p < math.inf, "finite and >= 0"),
        "kl_beta_min": (
            0 < cfg.kl_beta_min <= cfg.kl_beta_max,
            f"in (0, kl_beta_max = {cfg.kl_beta_max!r}]",
        ),
        "kl_beta_max": (cfg.kl_beta_max < math.inf, "finite and >= kl_beta_min"),
        "kl_lr_gain": (0 <= cfg.kl_lr_gain < math.inf, "finite and >= 0 (0: off)"),
    }


def _check_ranges(cfg: TrainConfig) -> None:
    for name, (ok, valid) in range_checks(cfg).items():
        if not ok:
            raise ValueError(
                f"config: {name} = {getattr(cfg, name)!r} is out of range: must be {valid}"
            )


def _check_online(cfg: TrainConfig) -> None:
    """Settings that online training cannot honour, refused before a model loads."""
    if cfg.ref_cache not in ("auto", "none"):
        raise ValueError(
            f"config: ref_cache {cfg.ref_cache!r} with online: the reference log-prob cache "
            "cannot serve pairs sampled afresh every step; leave ref_cache 'auto' (off with "
            "online) or pass 'none'"
        )
    if not cfg.online_judge.strip():
        raise ValueError("config: online_judge is empty: pass a judge spec (e.g. gold)")


def _check_offline(cfg: TrainConfig) -> None:
    if cfg.online_mixture:
        raise ValueError("config: online_mixture needs online: pass --online, or leave it 0")
    if cfg.online_labels != "hard":
        raise ValueError(
            f"config: online_labels {cfg.online_labels} needs online (offline pairs carry hard "
            "labels): pass --online, or leave it hard"
        )


def _check_kl_control(cfg: TrainConfig) -> None:
    """Settings that make KL-targeted training impossible, refused before a model loads."""
    if not cfg.kl_beta_min <= cfg.beta <= cfg.kl_beta_max:
        raise ValueError(
            f"config: beta = {cfg.beta!r} (the starting value with kl_target) is outside "
            f"[kl_beta_min, kl_beta_max] = [{cfg.kl_beta_min!r}, {cfg.kl_beta_max!r}]"
        )
    if cfg.kl_samples <= 0:
        raise ValueError("config: kl_target needs kl_samples > 0 (completions per prompt)")
    if cfg.eval_fraction == 0 and cfg.eval_data is None and cfg.eval_split is None:
        raise ValueError(
            "config: kl_target needs held-out prompts to sample from: set eval_fraction > 0, "
            "eval_data or eval_split"
        )
    if cfg.num_epochs is None:  # else max_steps is known once the data are
        kl_run_length_warning(cfg)


def kl_run_length_warning(cfg: TrainConfig) -> str | None:
    """A run too short for ``kl_target`` is refused: the first KL measurement comes after step
    ``kl_control_min_steps``, so no step of a run that ends there trains at a steered beta. One
    shorter than ``kl_control_steps`` gets a warning (the controller gets few measurements)."""
    if cfg.max_steps <= cfg.kl_control_min_steps:
        raise ValueError(
            f"config: kl_target needs max_steps > kl_control_min_steps = "
            f"{cfg.kl_control_min_steps}: the first KL measurement comes after step "
            f"{cfg.kl_control_min_steps}, so a "
            f"{cfg.max_steps}-step run never trains at a steered beta; train longer (at least "
            f"kl_control_steps = {cfg.kl_control_steps} steps) or drop kl_target"
        )
    if cfg.max_steps < cfg.kl_control_steps:
        return (
            f"gpo: warning: kl_target on a {cfg.max_steps}-step run, shorter than "
            f"kl_control_steps ({cfg.kl_control_steps}): beta is steered from step "
            f"{cfg.kl_control_min_steps} on, from few KL measurements, and can move little; "
            "the final KL may miss the target"
        )
    return None


def field_types(tp: Any) -> tuple[list[type], list[Any] | None]:
    """The runtime types (and Literal choices) a field annotation admits."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return [type(a) for a in typing.get_args(tp)], list(typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        kinds: list[type] = []
        for arg in typing.get_args(tp):
            kinds += field_types(arg)[0]
        return kinds, None
    if origin is list:
        return [list], None
    return [type(None) if tp is type(None) else tp], None


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_types(cfg: TrainConfig) -> None:
    for name, tp in _hints().items():
        value = getattr(cfg, name)
        kinds, choices = field_types(tp)
        if choices is not None and value not in choices:
            raise ValueError(f"config: {name} must be one of {choices}, got {value!r}")
        ok = any(
            isinstance(value, k) and not (k is int and isinstance(value, bool)) for k in kinds
        ) or (float in kinds and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            want = " or ".join(k.__name__ for k in kinds)
            raise ValueError(f"config: {name} must be {want}, got {type(value).__name__} {value!r}")


def suggest_field(key: str) -> str:
    return suggest(key, [f.name for f in dataclasses.fields(TrainConfig)])


def saved_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config as written to ``config.json``, checkpoints and trackers: credentials in URLs
    (a judge's ``base_url=https://user:key@host``) are masked, never stored."""
    out: dict[str, Any] = {}
    for name, value in dataclasses.asdict(cfg).items():
        if isinstance(value, str):
            value = redact_urls(value)
        elif isinstance(value, list):
            value = [redact_urls(v) if isinstance(v, str) else v for v in value]
        out[name] = value
    return out


def _from_saved_run(saved: Path, names: set[str], given: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config, minus what ``given`` sets; a masked value must be given again."""
    run = {k: v for k, v in json.loads(saved.read_text()).items() if k in names}
    for key, value in run.items():
        if key not in given and isinstance(value, str) and REDACTED in value:
            raise ValueError(
                f"{saved}: {key} held credentials, which are not saved ({value}); pass "
                f"--{key.replace('_', '-')} again (or keep keys in an environment variable)"
            )
    return run


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the YAML file, then CLI overrides; unknown keys are errors.

    With ``resume`` and a run folder that has a ``config.json``, the run's saved config replaces
    the defaults: only what the file or the flags give explicitly differs from it (and the
    trainer refuses a difference that changes the optimisation).
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    if path is not None:  # gpo's keys, or TRL's and HF's (gpo/train/trl_config.py)
        loaded = read_yaml_mapping(path, "config file", names | trl_names(), suggest_field)
        try:
            translated, ignored = from_trl(loaded, names)
        except ValueError as e:
            raise ValueError(f"config file {path}: {e}") from None
        if ignored:
            print(f"gpo: config file {path}: ignored {', '.join(ignored)}", file=sys.stderr)
        values.update(translated)
    values.update(overrides)
    saved = Path(str(values.get("out"))) / "config.json"
    if values.get("resume") and values.get("out") is not None and saved.is_file():
        values = {**_from_saved_run(saved, names, values), **values}
    return TrainConfig(**values)
