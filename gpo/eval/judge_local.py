"""A local Hugging Face causal LM as a pairwise judge (see :mod:`gpo.eval.judges`).

The model reads the judge question (through its chat template when the tokenizer has one, else
as plain text ending in "Answer:") and P(A) is read off the next-token distribution restricted
to the two answer tokens: ``P(A) = sigmoid(logit_A - logit_B)``. No sampling, so the judge is
deterministic. Each answer's logit is the log-sum-exp over its single-token spellings ("A" and
" A" are different tokens in BPE vocabularies; which one follows depends on the template).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from gpo.data.collate import pad_rows
from gpo.eval.judges import LABELS, Prompt, average_orders, both_orders

PLAIN_SUFFIX = "\nAnswer:"


def label_token_ids(tokenizer: Any, labels: Sequence[str] = LABELS) -> list[list[int]]:
    """Per label, the ids of its single-token spellings (``label``, `` label``); errors if none,
    or if two labels share a token."""
    out: list[list[int]] = []
    for label in labels:
        ids = []
        for text in (label, " " + label):
            enc = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(enc) == 1 and enc[0] != tokenizer.unk_token_id and enc[0] not in ids:
                ids.append(enc[0])
        if not ids:
            raise ValueError(
                f"the judge tokenizer has no single token for the answer {label!r}; "
                "the judge needs a model whose vocabulary has it"
            )
        out.append(ids)
    if set(out[0]) & set(out[1]):
        raise ValueError(f"the judge answers {labels[0]!r} and {labels[1]!r} share a token")
    return out


def encode_messages(
    tokenizer: Any, messages: Sequence[dict[str, str]], chat_template: bool | None = None
) -> list[int]:
    """Token ids of a conversation ready for the assistant's answer.

    ``chat_template=None``: the tokenizer's chat template when it has one, else plain text
    (the message contents joined, then "Answer:").
    """
    use_template = bool(tokenizer.chat_template) if chat_template is None else chat_template
    if use_template:
        ids = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids)
    text = "\n\n".join(m["content"] for m in messages) + PLAIN_SUFFIX
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


@torch.no_grad()
def choice_probabilities(
    model: Any,
    token_ids: Sequence[Sequence[int]],
    label_ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 8,
    progress: bool = False,
) -> list[float]:
    """P(first label) for each tokenized question, from the next-token logits.

    Right-padded batches with the logits read at each row's last real token, so padding never
    shifts positions and results do not depend on the batch size.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        starts = range(0, len(token_ids), batch_size)
        for start in tqdm(starts, desc="judging", unit="batch", disable=not progress, leave=False):
            batch = token_ids[start : start + batch_size]
            input_ids, mask = pad_rows(batch, pad_id)
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            last = mask.sum(1).to(device) - 1
            logp = torch.log_softmax(
                logits[torch.arange(len(batch), device=device), last].float(), -1
            )
            a = torch.logsumexp(logp[:, list(label_ids[0])], -1)
            b = torch.logsumexp(logp[:, list(label_ids[1])], -1)
            out.extend(torch.sigmoid(a - b).tolist())
    finally:
        model.train(was_training)
    return out


@dataclass
class LocalJudge:
    """A local causal LM as an order-swapped pairwise judge.

    ``model``: a path or hub name (loaded with :func:`gpo.models.loading.load_model_and_tokenizer`;
    ``smollm2`` is the embedded SmolLM2), or an already loaded model (then pass ``tokenizer``).
    """

    model: Any = "smollm2"
    tokenizer: Any = None
    batch_size: int = 8
    dtype: str = "float32"
    device: str | None = None
    chat_template: bool | None = None  # None: use the tokenizer's template if it has one
    progress: bool = False  # a progress bar over the judged batches
    name: str = "local"
    _label_ids: list[list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.model, str):
            from gpo.models.loading import load_model_and_tokenizer

            self.model, self.tokenizer = load_model_and_tokenizer(self.model, dtype=self.dtype)
        elif self.tokenizer is None:
            raise ValueError("a LocalJudge given a loaded model needs its tokenizer too")
        if self.device is not None:
            self.model.to(self.device)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self._label_ids = label_token_ids(self.tokenizer, LABELS)

    def __repr__(self) -> str:  # the model's repr is pages long
        path = getattr(getattr(self.model, "config", None), "_name_or_path", "") or "?"
        return f"LocalJudge(model={path!r}, batch_size={self.batch_size})"

    def prob_first_label(self, questions: Sequence[str]) -> list[float]:
        """P(answer A) for each judge question (a user message)."""
        ids = [
            encode_messages(self.tokenizer, [{"role": "user", "content": q}], self.chat_template)
            for q in questions
        ]
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        return choice_probabilities(
            self.model, ids, self._label_ids, pad or 0, self.batch_size, self.progress
        )

    def __call__(
        self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str]
    ) -> list[float]:
        return average_orders(self.prob_first_label(both_orders(prompts, first, second)))
