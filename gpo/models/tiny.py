"""A tiny randomly initialised Llama model and word-level tokenizer, for tests and smoke runs.

Builds in well under a second with no download; the tokenizer has bos/eos/pad/unk tokens and a
ChatML-like chat template, so conversational preference data works with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")

#: Default vocabulary: chat roles, punctuation and a few hundred-ish everyday words.
DEFAULT_WORDS: tuple[str, ...] = tuple(
    """
    system user assistant : . , ! ? ' a an the is are was be it this that and or but not of to
    in on at for with about as by from one two three some many few very more most good bad big
    small short long new old red blue green happy sad fast slow cat cats dog dogs bird tree
    trees sun moon sky sea river rain snow wind fire water book books music song city house
    garden apple bread coffee tea write describe give tell me sentence word words tip fact about
    what why how i you we they he she my your our their like likes love see sees run runs eat
    eats make makes yes no hello thanks please
    """.split()  # noqa: SIM905 - a word list reads best as text
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<bos>' + message['role'] + ' : ' + message['content'] + ' <eos>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<bos>assistant :' }}{% endif %}"
)


def tiny_tokenizer(vocab_words: Sequence[str] | None = None) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` (whitespace/punctuation split, unknown -> <unk>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(vocab_words if vocab_words is not None else DEFAULT_WORDS))
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, tidies punct.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model_and_tokenizer(
    vocab_words: Sequence[str] | None = None, n_layers: int = 2, hidden: int = 32, seed: int = 0
) -> tuple[Any, Any]:
    """(LlamaForCausalLM, tokenizer): random weights from ``seed``, global RNG left untouched."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer(vocab_words)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,  # above the default max_length (1024)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
