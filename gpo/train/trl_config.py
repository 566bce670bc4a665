"""TRL and Hugging Face names in a ``gpo train`` config file.

A TRL ``DPOConfig`` (with HF ``TrainingArguments``, TRL's ``ModelConfig`` and ``ScriptArguments``)
YAML runs as far as its keys map onto :class:`gpo.train.config.TrainConfig`:

- :data:`TRL_KEYS`: renamed keys (``per_device_train_batch_size`` -> ``batch_size``), and HF
  values gpo spells otherwise (``max_steps: -1``, ``report_to: wandb``, ``optim: adamw_torch``);
- :data:`REFUSED`: keys that change what is trained and that gpo lacks: at TRL's default they are
  ignored, at any other value refused with what to write instead;
- :data:`IGNORED`: the other TRL/HF names (hub, logging, dataloader, distributed settings):
  ignored, and named in one line on stderr.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

#: ``convert(value, whole file) -> {gpo key: value}`` ({}: nothing to set).
Convert = Callable[[Any, dict[str, Any]], dict[str, Any]]


def _to(name: str, fn: Callable[[Any], Any] = lambda v: v) -> Convert:
    return lambda v, _: {name: fn(v)}


def _one_loss(value: Any) -> Any:
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(
                f"loss_type {value}: gpo trains one objective (no weighted mix of TRL losses)"
            )
        return value[0]
    return value


def _warmup(value: Any, values: dict[str, Any]) -> dict[str, Any]:
    """HF 5: ``warmup_steps`` below 1 is a ratio; gpo has ``warmup_ratio`` only."""
    if 0 <= value < 1:
        return {"warmup_ratio": value}
    steps = values.get("max_steps", -1)
    if isinstance(steps, int) and steps > 0:
        return {"warmup_ratio": value / steps}
    raise ValueError(
        f"warmup_steps: {value} needs max_steps to become gpo's warmup_ratio: set max_steps, or "
        "write warmup_ratio"
    )


def _epochs(value: Any, values: dict[str, Any]) -> dict[str, Any]:
    """As in HF, a ``max_steps`` above 0 wins over ``num_train_epochs``."""
    steps = values.get("max_steps", -1)
    return {} if isinstance(steps, int) and steps > 0 else {"num_epochs": value}


def _unset_if(*unset: Any) -> Callable[[str], Convert]:
    """Same-name keys whose HF value ``unset`` means gpo's default."""
    return lambda name: lambda v, _: {} if v in unset else {name: v}


_OPTIM = {"adamw_torch": "adamw", "adamw_torch_fused": "adamw_fused"}
_SCHEDULER = {"constant_with_warmup": "constant"}  # gpo's constant warms up by warmup_ratio

#: TRL/HF key -> (the gpo key it sets, how its value converts).
TRL_KEYS: dict[str, tuple[str, Convert]] = {
    "per_device_train_batch_size": ("batch_size", _to("batch_size")),
    "num_train_epochs": ("num_epochs", _epochs),
    "lr_scheduler_type": ("lr_scheduler", _to("lr_scheduler", lambda v: _SCHEDULER.get(v, v))),
    "output_dir": ("out", _to("out")),
    "model_name_or_path": ("model", _to("model")),
    "dataset_name": ("data", _to("data")),
    "dataset_train_split": ("split", _to("split")),
    "dataset_test_split": ("eval_split", _to("eval_split")),
    "loss_type": ("loss", _to("loss", _one_loss)),
    "use_peft": ("finetune", _to("finetune", lambda v: "lora" if v else "full")),
    "torch_dtype": ("dtype", _unset_if("auto", None)("dtype")),
    "dtype": ("dtype", _unset_if("auto", None)("dtype")),
    "bf16": ("mixed_precision", lambda v, _: {"mixed_precision": "bf16"} if v else {}),
    "fp16": ("mixed_precision", lambda v, _: {"mixed_precision": "fp16"} if v else {}),
    "eval_strategy": ("eval_steps", lambda v, _: {"eval_steps": 0} if v == "no" else {}),
    "save_strategy": ("save_steps", lambda v, _: {"save_steps": 0} if v == "no" else {}),
    "warmup_steps": ("warmup_ratio", _warmup),
    "max_steps": ("max_steps", _unset_if(-1)("max_steps")),  # HF's -1: use num_train_epochs
    "eval_steps": ("eval_steps", _unset_if(None)("eval_steps")),
    "save_total_limit": ("save_total_limit", lambda v, _: {"save_total_limit": v or 0}),
    "report_to": ("report_to", lambda v, _: {"report_to": [v] if isinstance(v, str) else v}),
    "optim": ("optim", lambda v, _: {"optim": _OPTIM.get(v, v)}),
    "lora_target_modules": ("lora_target_modules", _to("lora_target_modules", lambda v: _comma(v))),
}


def _comma(value: Any) -> Any:
    return ",".join(value) if isinstance(value, list) else value


#: TRL/HF key -> (its default, what gpo offers instead): ignored at the default, else refused.
REFUSED: dict[str, tuple[Any, str]] = {
    "f_divergence_type": (
        "reverse_kl",
        "write loss: fdpo:js (js_divergence), fdpo:forward_kl or fdpo:alpha=A (A = 1 - "
        "f_alpha_divergence_coef)",
    ),
    "loss_weights": (None, "gpo trains one objective"),
    "ld_alpha": (None, "not in gpo"),
    "use_weighting": (False, "not in gpo"),
    "label_smoothing": (0.0, "not in gpo (TRL's robust/exo losses)"),
    "label_smoothing_factor": (0.0, "not in gpo"),
    "rpo_alpha": (None, "not in gpo"),
    "sync_ref_model": (False, "not in gpo (pi_ref stays fixed; see ref_model)"),
    "neftune_noise_alpha": (None, "not in gpo"),
    "adam_beta1": (0.9, "gpo's AdamW uses 0.9"),
    "adam_beta2": (0.999, "gpo's AdamW uses 0.999"),
    "adam_epsilon": (1e-8, "gpo's AdamW uses 1e-8"),
    "use_liger_kernel": (False, "not in gpo"),
    "padding_free": (False, "gpo splits batches by length itself (max_padding)"),
    "use_dora": (False, "not in gpo (LoRA only)"),
    "use_rslora": (False, "not in gpo (LoRA scale is lora_alpha / lora_r)"),
    "lora_modules_to_save": (None, "not in gpo"),
    "load_in_8bit": (False, "not in gpo"),
    "load_in_4bit": (False, "not in gpo"),
}

#: Other DPOConfig / TrainingArguments / ModelConfig / ScriptArguments names (TRL 1.16,
#: transformers 5): nothing in gpo to set, so ignored.
_IGNORED = """
    model_init_kwargs router_aux_loss_coef disable_dropout dataset_num_proc truncation_mode
    pad_to_multiple_of precompute_ref_log_probs precompute_ref_batch_size
    f_alpha_divergence_coef discopop_tau activation_offloading ref_model_mixup_alpha
    ref_model_sync_steps pad_token lr_scheduler_kwargs optim_args optim_target_modules
    average_tokens_across_devices bf16_full_eval fp16_full_eval tf32 activation_checkpointing
    activation_checkpointing_kwargs gradient_checkpointing_kwargs torch_compile
    torch_compile_backend torch_compile_mode liger_kernel_config use_cache
    torch_empty_cache_steps auto_find_batch_size logging_strategy logging_first_step
    log_on_each_node logging_nan_inf_filter include_num_input_tokens_seen log_level
    log_level_replica disable_tqdm project trackio_space_id trackio_bucket_id
    trackio_static_space_id eval_delay per_device_eval_batch_size prediction_loss_only
    eval_on_start eval_do_concat_batches eval_use_gather_object eval_accumulation_steps
    include_for_metrics batch_eval_metrics save_only_model save_on_each_node
    enable_jit_checkpoint push_to_hub hub_token hub_private_repo hub_model_id hub_strategy
    hub_always_push hub_revision load_best_model_at_end metric_for_best_model
    greater_is_better ignore_data_skip restore_callback_states_from_checkpoint
    full_determinism data_seed use_cpu accelerator_config parallelism_config
    dataloader_drop_last dataloader_num_workers dataloader_pin_memory
    dataloader_persistent_workers dataloader_prefetch_factor dataloader_multiprocessing_context
    dataloader_in_order remove_unused_columns label_names train_sampling_strategy
    length_column_name ddp_find_unused_parameters ddp_bucket_cap_mb ddp_broadcast_buffers
    ddp_static_graph ddp_backend ddp_timeout fsdp fsdp_config deepspeed debug
    skip_memory_metrics do_train do_eval do_predict resume_from_checkpoint local_rank
    logging_dir overwrite_output_dir model_revision attn_implementation lora_task_type
    bnb_4bit_quant_type use_bnb_nested_quant dataset_config dataset_streaming
    gradient_checkpointing_use_reentrant ignore_bias_buffers
"""
IGNORED = frozenset(_IGNORED.split())


def trl_names() -> set[str]:
    """Every non-gpo key a config file may hold (mapped, refused at a non-default, ignored)."""
    return {*TRL_KEYS, *REFUSED, *IGNORED}


def suggest(key: str, gpo_names: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of gpo's names and TRL's mapped ones (a TRL
    name is answered with gpo's), else ``''``."""
    if key in TRL_KEYS:
        return f" (TRL's name for {TRL_KEYS[key][0]!r})"
    close = difflib.get_close_matches(key, [*gpo_names, *TRL_KEYS], n=1)
    if not close:
        return ""
    gpo = TRL_KEYS[close[0]][0] if close[0] in TRL_KEYS else close[0]
    return f" (did you mean {gpo!r}?)"


def from_trl(values: dict[str, Any], gpo_names: set[str]) -> tuple[dict[str, Any], list[str]]:
    """``values`` with TRL/HF keys translated into gpo's; and the keys ignored, in file order.

    A gpo key given next to a TRL key that maps onto it wins (it is gpo's own spelling)."""
    out: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in values.items():
        if key in TRL_KEYS:
            mapped = TRL_KEYS[key][1](value, values)
            out.update({k: v for k, v in mapped.items() if k == key or k not in values})
        elif key in REFUSED:
            default, instead = REFUSED[key]
            if value != default:
                raise ValueError(f"{key}: {value!r} has no equivalent in gpo train: {instead}")
            ignored.append(key)
        elif key in IGNORED:
            ignored.append(key)
        elif key in gpo_names:
            out[key] = value
    return out, ignored
