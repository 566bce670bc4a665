"""A model's position limit, and the ``max_length`` that fits it.

Configs name the limit differently: Llama and most others ``max_position_embeddings``, GPT-2
``n_positions`` (older GPT-2 files also ``n_ctx``), MPT ``max_seq_len``, ChatGLM and Qwen-1
``seq_length``, others ``max_sequence_length``, ``max_seq_length``, ``seq_len``; a multimodal
config keeps it in its ``text_config``. The smallest one found is the limit (the names vLLM
reads for its ``max_model_len``).
"""

from __future__ import annotations

from typing import Any

#: TRL's default ``max_length``; a model with fewer positions gets its own limit instead.
DEFAULT_MAX_LENGTH = 1024

POSITION_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "max_seq_len",
    "seq_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)


def _as_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, dict):
        return config
    return config.to_dict() if hasattr(config, "to_dict") else vars(config)


def position_limit(config: Any) -> tuple[str, int] | None:
    """``(key, positions)``: the smallest position limit a model config (or its dict) states,
    or None when it states none (e.g. relative position encodings)."""
    values = _as_dict(config)
    found = [(k, values[k]) for k in POSITION_KEYS if k in values]
    text = values.get("text_config")
    if isinstance(text, dict) or hasattr(text, "to_dict"):
        found += [(k, v) for k, v in _as_dict(text).items() if k in POSITION_KEYS]
    found = [(k, v) for k, v in found if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return min(found, key=lambda kv: kv[1]) if found else None


def resolve_max_length(requested: int | None, config: Any, model: str) -> tuple[int, str]:
    """``(max_length, how it was chosen)``: ``requested`` if given, else ``min(1024, the
    model's limit)``; a requested length over the limit is refused."""
    limit = position_limit(config)
    if requested is None:
        if limit is not None and limit[1] < DEFAULT_MAX_LENGTH:
            return limit[1], f"the model's {limit[0]} ({limit[1]}), under the default 1024"
        return DEFAULT_MAX_LENGTH, "the default"
    if limit is not None and requested > limit[1]:
        raise ValueError(
            f"config: max_length = {requested} is more than model {model}'s {limit[0]} "
            f"({limit[1]}); lower --max-length to at most {limit[1]}, or leave it out "
            f"(default: min(1024, the model's limit))"
        )
    return requested, "as given"
