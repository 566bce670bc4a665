"""Models a new user brings, built here without gpo's tiny-model helper (issue 32): a GPT-2 with
256 positions and no chat template, and a Llama with 512 positions, each with a byte-level BPE
tokenizer trained on a few sentences (every string encodes, no ``<unk>``)."""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "The film was a quiet triumph, and the cast was good.",
    "A slow, dull plot with bad acting; I left early.",
    "What is the capital of France? Paris is the capital.",
    "Write a short poem about the sea and the wind.",
] * 8


def _bpe_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def _save(path: Path, seed: int, model_cls: type, config_cls: type, **config: int) -> Path:
    import torch

    torch.manual_seed(seed)
    tokenizer = _bpe_tokenizer()
    eos = tokenizer.eos_token_id
    cfg = config_cls(vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, **config)
    model_cls(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def gpt2_256(path: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 (``n_positions`` 256, no pad token, no chat template) saved at ``path``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return _save(
        path, seed, GPT2LMHeadModel, GPT2Config, n_positions=256, n_embd=32, n_layer=2, n_head=2
    )


def llama_512(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (``max_position_embeddings`` 512, no chat template) saved at ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _save(
        path, seed, LlamaForCausalLM, LlamaConfig, max_position_embeddings=512, hidden_size=32,
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
