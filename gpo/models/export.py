"""A run's trained policy as a standalone model folder (``gpo export RUN --merge OUT``).

``RUN/final/`` is what ``gpo train`` saves: full weights (loads with ``from_pretrained``) or a
LoRA adapter whose ``adapter_config.json`` names the base model by path (loads with PEFT's
``PeftModel.from_pretrained``). Tools that know neither gpo nor PEFT want one folder with merged
weights, the tokenizer and its chat template, and a generation config: this module writes it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpo.models.loading import load_model_and_tokenizer, old_checkpointing_names_quiet

FINAL = "final"  # the folder `gpo train` saves the trained model into (gpo.train.checkpoint)
ADAPTER_CONFIG = "adapter_config.json"


class ExportError(ValueError):
    """The run folder cannot be exported; the message says why and what to do."""


@dataclass(frozen=True)
class Exported:
    out: Path
    kind: str  # "lora" (merged into its base) or "full"
    base: str | None  # the LoRA base model's path, as the adapter names it
    parameters: int


def _is_model_dir(folder: Path) -> bool:
    """A LoRA adapter or a transformers model (a run's own config.json has no model_type)."""
    if (folder / ADAPTER_CONFIG).is_file():
        return True
    try:
        return "model_type" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def trained_model_dir(run: Path) -> Path:
    """``RUN/final`` (or ``RUN`` itself when it is such a folder, e.g. a checkpoint)."""
    if not run.is_dir():
        raise ExportError(f"{run}: no such run folder")
    for folder in (run / FINAL, run):
        if _is_model_dir(folder):
            return folder
    raise ExportError(
        f"{run}: not a gpo run folder with a trained model (no {FINAL}/ holding "
        f"{ADAPTER_CONFIG} or a model's config.json; was it trained with --save-final false?)"
    )


def _load_trained(folder: Path) -> tuple[Any, Any, str, str | None]:
    """(merged model, tokenizer, kind, base) from a ``final/``-like folder."""
    if not (folder / ADAPTER_CONFIG).is_file():
        model, tokenizer = load_model_and_tokenizer(str(folder))
        return model, tokenizer, "full", None
    from peft import PeftModel

    base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ExportError(f"{folder / ADAPTER_CONFIG}: names no base_model_name_or_path")
    if base.startswith(("/", ".", "~")) and not Path(base).expanduser().exists():
        raise ExportError(
            f"{folder}: the LoRA base model {base} it names is missing (moved or deleted?)"
        )
    model, base_tokenizer = load_model_and_tokenizer(base)
    with old_checkpointing_names_quiet():
        merged = PeftModel.from_pretrained(model, folder).merge_and_unload()
    tokenizer = _tokenizer(folder) or base_tokenizer
    if tokenizer.chat_template is None:  # older adapters saved without one: the base's
        tokenizer.chat_template = base_tokenizer.chat_template
    return merged, tokenizer, "lora", base


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):  # an adapter folder without tokenizer files
        return None


def export_merged(run: Path, out: Path) -> Exported:
    """Write RUN's trained policy (LoRA merged into its base) to the new folder ``out``:
    weights (safetensors), config, generation config, tokenizer and chat template."""
    folder = trained_model_dir(run)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: already exists and is not an empty folder; choose a new OUT")
    model, tokenizer, kind, base = _load_trained(folder)
    gen = model.generation_config
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):  # generate() stops and pads
        if getattr(gen, key, None) is None and getattr(tokenizer, key, None) is not None:
            setattr(gen, key, getattr(tokenizer, key))
    model.config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # written beside OUT, then renamed: OUT is whole or absent
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n = sum(p.numel() for p in model.parameters())
    return Exported(out, kind, base, n)
