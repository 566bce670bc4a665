"""The tokenizer alone, for commands that need no weights (``gpo data check``): loading it with
the model's config, and setting its chat template from a Jinja file (``--chat-template``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpo.data.hub import check_hub_reachable, hub_offline
from gpo.data.sources import looks_like_path


def set_chat_template(tokenizer: Any, path: str) -> None:
    """``tokenizer.chat_template`` from a Jinja file (what TRL users set by hand); it renders
    conversational data and is saved with the trained model."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"chat_template: cannot read {path}: {e}") from None
    if not text.strip():
        raise ValueError(f"chat_template: {path} is empty")
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        ImmutableSandboxedEnvironment().parse(text)  # a syntax error fails now, not mid-data
    except ImportError:  # transformers then reports it when the template is used
        pass
    except Exception as e:
        raise ValueError(f"chat_template: {path} is not a valid Jinja template: {e}") from None
    tokenizer.chat_template = text


def _embedded() -> tuple[Any, dict[str, Any]]:
    """The embedded SmolLM2's tokenizer and config: from the converted cache when it exists,
    else read from the GGUF file's metadata (seconds; the conversion takes ~20 s and 1.2 GB)."""
    from transformers import AutoConfig, AutoTokenizer

    from gpo.models.embedded import CACHE_SUBDIR, MARKER_FILE, cache_root, find_gguf

    cached = cache_root() / CACHE_SUBDIR
    if (cached / MARKER_FILE).is_file():
        return AutoTokenizer.from_pretrained(cached), _config_dict(str(cached))
    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return tokenizer, config.to_dict()


def _config_dict(path: str) -> dict[str, Any]:
    """The model's config.json as a dict (no model class needed: any architecture reads)."""
    from transformers import PretrainedConfig

    try:
        return PretrainedConfig.get_config_dict(path)[0]
    except (OSError, ValueError):
        return {}  # a tokenizer-only folder: no position limit known


def load_tokenizer(name: str) -> tuple[Any, dict[str, Any]]:
    """``(tokenizer, config dict)`` of model ``name`` without loading (or downloading) its
    weights; the pad token falls back to EOS, as for training."""
    from transformers import AutoTokenizer

    from gpo.models.embedded import is_embedded_name

    if is_embedded_name(name):
        tokenizer, config = _embedded()
    else:
        if not Path(name).expanduser().exists():
            if looks_like_path(name):
                raise ValueError(f"model path {name} does not exist")
            if not hub_offline("TRANSFORMERS_OFFLINE"):
                check_hub_reachable(f"model {name!r}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load the tokenizer of model {name!r}: {e}") from None
        config = _config_dict(name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, config
