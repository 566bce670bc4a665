"""A reference policy other than the starting weights (``--ref-model``, TRL's ``ref_model``).

A model folder (or hub name) loads as it is; a LoRA adapter folder (``adapter_config.json``)
loads onto its base model (the one its config names, else the policy's starting model) and is
merged, so pi_ref is one plain frozen network and its log-prob cache key
(:func:`gpo.models.ref_cache.model_fingerprint`, a hash of its weights) covers the adapter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from gpo.models.loading import (
    ModelError,
    disable_dropout,
    load_model_and_tokenizer,
    old_checkpointing_names_quiet,
)


def _adapter_base(folder: Path, policy_model: str) -> str:
    config = json.loads((folder / "adapter_config.json").read_text())
    return str(config.get("base_model_name_or_path") or policy_model)


def _load(path: str, policy_model: str, dtype: str, trust_remote_code: bool) -> tuple[Any, Any]:
    folder = Path(path).expanduser()
    if not (folder / "adapter_config.json").is_file():
        try:
            return load_model_and_tokenizer(path, dtype, trust_remote_code)
        except ModelError as e:
            raise ModelError(f"--ref-model: {e}") from None
    from peft import PeftModel
    from transformers import AutoTokenizer

    base_name = _adapter_base(folder, policy_model)
    try:
        base, tokenizer = load_model_and_tokenizer(base_name, dtype, trust_remote_code)
    except ModelError as e:
        raise ModelError(f"--ref-model {path} is a LoRA adapter on {base_name}: {e}") from None
    if (folder / "tokenizer_config.json").is_file():  # saved with the adapter: that one counts
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    try:
        with old_checkpointing_names_quiet():
            model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"cannot load LoRA adapter {path} as the reference ({e})") from None
    return model, tokenizer


def check_same_tokenizer(ref: Any, policy: Any, ref_name: str, policy_name: str) -> None:
    """pi_ref must score the policy's token ids: refuse another vocabulary, in one line."""
    mine, theirs = policy.get_vocab(), ref.get_vocab()
    if mine == theirs:
        return
    differ = len({t for t in mine.keys() & theirs.keys() if mine[t] != theirs[t]})
    only = len(mine.keys() ^ theirs.keys())
    raise ModelError(
        f"--ref-model {ref_name} has another tokenizer than --model {policy_name} "
        f"({len(theirs)} vs {len(mine)} tokens; {only} in one only, {differ} with other ids): "
        "the reference must score the policy's token ids; pass a reference with the same "
        "tokenizer"
    )


def load_reference_model(
    path: str, policy_model: str, tokenizer: Any, dtype: str, trust_remote_code: bool
) -> nn.Module:
    """The frozen, eval-mode reference from ``path`` (a model, or a LoRA adapter folder)."""
    ref, ref_tokenizer = _load(path, policy_model, dtype, trust_remote_code)
    check_same_tokenizer(ref_tokenizer, tokenizer, path, policy_model)
    rows = ref.get_input_embeddings().num_embeddings
    if rows < len(tokenizer):
        raise ModelError(
            f"--ref-model {path} embeds {rows} token ids, fewer than the tokenizer's "
            f"{len(tokenizer)}"
        )
    disable_dropout(ref)
    ref.requires_grad_(False)
    return ref.eval()
