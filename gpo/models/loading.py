"""Loading the policy, its tokenizer, LoRA adapters, and the reference policy."""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from gpo.data.hub import check_hub_reachable, hub_offline

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(ValueError):
    """The model or tokenizer cannot be loaded; the message says what to do."""


def _resolve(name_or_path: str) -> str:
    from gpo.models.embedded import resolve_model_path

    return resolve_model_path(name_or_path)


def load_model_and_tokenizer(
    name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False
) -> tuple[nn.Module, Any]:
    """``from_pretrained`` a causal LM and its tokenizer (the embedded alias resolves first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard load/save bars: noise next to gpo's own bar
    if dtype not in DTYPES:
        raise ModelError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    path = _resolve(name_or_path)
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_local and not Path(path).expanduser().exists():
        raise ModelError(f"model path {path} does not exist")
    if not Path(path).expanduser().exists() and not hub_offline("TRANSFORMERS_OFFLINE"):
        check_hub_reachable(f"model {name_or_path!r}")  # seconds, not ~50 s of retries
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:  # ValueError: e.g. a folder with no tokenizer files
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "the folder is not a model and tokenizer saved with save_pretrained"
            if Path(path).expanduser().is_dir()
            else "the Hub is switched off (HF_HUB_OFFLINE=1): pass a local model folder, or "
            "'smollm2' for the embedded SmolLM2-135M-Instruct"
            if offline
            else "check the name or pass a local folder"
        )
        raise ModelError(f"cannot load model {name_or_path!r}: {hint} ({e})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def disable_dropout(model: nn.Module) -> None:
    """Dropout off, as TRL does by default: policy and reference see the same network."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def add_lora(
    model: nn.Module, r: int, alpha: int, dropout: float, target_modules: str | list[str]
) -> nn.Module:
    """Wrap ``model`` with fresh LoRA adapters (PEFT); the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    targets = (
        target_modules
        if isinstance(target_modules, list)
        else (
            "all-linear"
            if target_modules == "all-linear"
            else [t.strip() for t in target_modules.split(",")]
        )
    )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        fan_in_fan_out=uses_conv1d(model),
    )
    with old_checkpointing_names_quiet():
        return get_peft_model(model, config)


def uses_conv1d(model: nn.Module) -> bool:
    """Whether the layers LoRA adapts are transformers' ``Conv1D`` (GPT-2 and its kin store
    weights transposed: PEFT needs ``fan_in_fan_out=True``, else it warns and sets it itself)."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    kinds = {
        type(m) for m in model.modules() if isinstance(m, (Conv1D, nn.Linear)) and m is not head
    }
    return kinds == {Conv1D}


#: transformers 5 renamed gradient checkpointing to activation checkpointing; PEFT and TRL still
#: call the old names, each warning once per call site when gpo calls into them.
OLD_CHECKPOINTING_NAMES = r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated"


@contextlib.contextmanager
def old_checkpointing_names_quiet() -> Iterator[None]:
    """Silence only those FutureWarnings, only around gpo's own calls into PEFT and TRL."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=OLD_CHECKPOINTING_NAMES, category=FutureWarning)
        yield


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode copy for full fine-tuning's reference policy."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass (TRL's default).

    Non-reentrant checkpointing: exact gradients, and no need for inputs that require grad; a
    PEFT model's embedding outputs are made to require grad anyway, as TRL and PEFT do, so that
    a reentrant setting elsewhere still reaches the adapters."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        name = type(getattr(model, "get_base_model", lambda: model)()).__name__
        raise ModelError(f"{name} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if is_peft(model):
        model.enable_input_require_grads()


Finetune = Literal["lora", "full"]
