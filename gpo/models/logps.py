"""Sequence log-probs of completions under a causal LM, for a :class:`SeqBatch`.

Only completion tokens are scored: the target at position ``t`` is token ``t + 1``, counted when
that token is a completion token. Prompt and padding never contribute.

Fast path: the decoder runs on the whole batch but the LM head only on the positions that
predict a completion token, so full-vocabulary logits are never built for prompt and padding
positions; when even those would exceed :data:`HEAD_CHUNK` entries, the head and the log-softmax
run in checkpointed chunks (recomputed in the backward pass), so the full ``[tokens, vocab]``
logits never exist at once. Models that post-process their logits (soft-capping, scaling) would
differ there, so the first call on a model compares both paths and keeps the fast one only if
they agree.

Prefix sharing (:class:`SharedPromptBatch`): the prompt is run once, its KV cache (with its
autograd graph) repeated for the two responses, and the responses run on top of it; the first
response token is predicted from the prompt's last hidden state. Same numbers as the plain path
up to float rounding, about half the work when the prompt dominates. It needs the fast path and
a model that takes ``past_key_values``; the first call on a model checks it against the plain
path and falls back (with a warning) if they differ or the model refuses. Under gradient
checkpointing (which drops the cache in training) the plain path runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gpo.data.collate import SeqBatch, SharedPromptBatch
from gpo.losses.numerics import warn_once

Reduction = Literal["sum", "mean"]
# The per-model self-checks' verdicts live as attributes on the model object: the answer belongs
# to that instance (its architecture and patches) and is discarded with it.
_FAST_OK = "_gpo_fast_logps_ok"
_SHARED_OK = "_gpo_shared_prompt_ok"
_CHECK_ROWS = 4  # sequences compared by the per-model path checks


@dataclass
class SequenceLogps:
    """Per-sequence values over completion tokens, ``[2B]`` (chosen rows first)."""

    logps: Tensor  # summed (or mean, by ``reduction``) token log-probs
    tokens: Tensor  # number of completion tokens
    logits_sum: Tensor  # sum over tokens of the vocab-mean logit (TRL's logits/* metric), detached

    def split(self) -> tuple[Tensor, Tensor]:
        """``(chosen, rejected)`` halves of ``logps``."""
        return self.logps.chunk(2)


def _inputs(batch: SeqBatch) -> dict[str, Tensor | bool]:
    return {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "position_ids": batch.position_ids,
        "use_cache": False,
    }


def _completion_logits(model: nn.Module, batch: SeqBatch, mask: Tensor, fast: bool) -> Tensor:
    """Logits ``[N completion tokens, V]`` at the positions predicting completion tokens."""
    kwargs = _inputs(batch)
    if fast:
        hidden = model.get_decoder()(**kwargs).last_hidden_state  # type: ignore[operator]
        return model.get_output_embeddings()(hidden[:, :-1][mask])  # type: ignore[operator]
    return model(**kwargs).logits[:, :-1][mask]


#: Logit entries (tokens x vocab) the LM head computes at once: 2^26 = 256 MB in float32.
HEAD_CHUNK = 2**26


class _TargetLogProb(torch.autograd.Function):
    """``log_softmax(logits)[i, targets[i]]`` with a backward that reuses the saved log-softmax.

    Same values and gradient as ``-cross_entropy(reduction="none")``. The gradient,
    ``g * (onehot - softmax)``, is written over the saved ``[N, V]`` log-softmax in place
    (one ``exp_`` pass), instead of cross-entropy's new zero-filled ``[N, V]`` for the gather's
    gradient plus another for log-softmax's: ~5% of a SmolLM2 CPU step (docs/performance.md).
    The saved tensor is consumed, so a second backward through it raises (version check).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, logits: Tensor, targets: Tensor
    ) -> Tensor:
        log_probs = torch.log_softmax(logits, -1)
        ctx.save_for_backward(log_probs, targets)
        return log_probs.gather(1, targets[:, None]).squeeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        log_probs, targets = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_logits = log_probs.exp_().mul_(-grad[:, None])
        return grad_logits.scatter_add_(1, targets[:, None], grad[:, None]), None


def _token_logps(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Target log-probs ``[N]`` and the (detached) vocab-mean logit ``[N]`` of ``logits``."""
    logits = logits.float()
    if not torch.is_grad_enabled() or not logits.requires_grad:
        token_logps = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
    else:
        token_logps = _TargetLogProb.apply(logits, targets)
    return token_logps, logits.detach().mean(-1)


#: Under autocast, run the LM head's matmul in float32 too (not only its log-softmax). Set by
#: ``bench/bf16_drift.py --head bf16`` to measure the difference; see :func:`_head_logits`.
HEAD_FP32_UNDER_AUTOCAST = True


def _head_logits(head: nn.Module, hidden: Tensor) -> Tensor:
    """``head(hidden)``; under autocast with float32 head weights, computed in float32.

    Mixed precision (``mixed_precision: bf16``) runs the decoder in bf16, but a bf16 logit of
    magnitude ~20 is rounded by up to ~0.06, and a sequence log-prob sums hundreds of target
    log-probs, so the LM head's logits, their log-softmax (:func:`_token_logps`) and the sums
    (:func:`_reduce`) stay in float32: the head is one matmul of the model, its input is upcast.
    """
    device = hidden.device.type
    weight = getattr(head, "weight", None)
    fp32_weights = isinstance(weight, Tensor) and weight.dtype == torch.float32
    if HEAD_FP32_UNDER_AUTOCAST and fp32_weights and torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            return head(hidden.float())
    return head(hidden)


def _head_token_logps(head: nn.Module, hidden: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_token_logps` of ``head(hidden)``, in chunks of at most HEAD_CHUNK logits."""
    vocab = getattr(head, "out_features", None) or getattr(head, "num_embeddings", None)
    rows = max(1, HEAD_CHUNK // vocab) if isinstance(vocab, int) else hidden.shape[0]
    if hidden.shape[0] <= rows:
        return _token_logps(_head_logits(head, hidden), targets)

    def part(h: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return _token_logps(_head_logits(head, h), t)

    outs = [
        checkpoint(part, h, t, use_reentrant=False) if torch.is_grad_enabled() else part(h, t)
        for h, t in zip(hidden.split(rows), targets.split(rows), strict=True)
    ]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _can_be_fast(model: nn.Module) -> bool:
    try:
        return model.get_decoder() is not None and model.get_output_embeddings() is not None
    except (AttributeError, NotImplementedError):
        return False


@contextmanager
def _self_check(model: nn.Module) -> Iterator[None]:
    """The fast paths' checks compare two forwards: run them without dropout (eval mode) and
    without drawing from the RNG, so they neither fail on dropout noise nor shift the training's
    random stream (a resumed run checks at its first step, an uninterrupted one at step 1); and
    without autocast, in the weights' own precision: they test whether a path is exact for this
    model, which bf16 rounding of two differently shaped forwards would hide (under bf16
    autocast prefix sharing failed its 1e-4 check on SmolLM2 and fell back, doubling the work)."""
    was_training = model.training
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    device_type = next(model.parameters()).device.type
    with (
        torch.random.fork_rng(devices=cuda),
        torch.no_grad(),
        torch.autocast(device_type, enabled=False),
    ):
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)


def _use_fast(model: nn.Module, batch: SeqBatch, mask: Tensor) -> bool:
    ok = getattr(model, _FAST_OK, None)
    if ok is None:
        ok = _can_be_fast(model)
        if ok:  # checked on a few rows: full-vocabulary logits of a big batch could be huge
            batch = SeqBatch(*(getattr(batch, f.name)[:_CHECK_ROWS] for f in fields(SeqBatch)))
            mask = mask[:_CHECK_ROWS]
            with _self_check(model):
                fast = _completion_logits(model, batch, mask, True)
                plain = _completion_logits(model, batch, mask, False)
            ok = bool(torch.allclose(fast, plain, rtol=1e-4, atol=1e-4))
        setattr(model, _FAST_OK, ok)
    return ok


def _reduce(
    per_token: tuple[Tensor, Tensor], rows: Tensor, tokens: Tensor, reduction: Reduction
) -> SequenceLogps:
    """Per-sequence sums of ``(token log-probs, mean logits)`` ``[N]``; ``rows``: each's row."""
    token_logps, mean_logits = per_token
    zeros = torch.zeros(tokens.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    logps = zeros.index_add(0, rows, token_logps)
    if reduction == "mean":
        logps = logps / tokens.clamp(min=1)
    logits_sum = zeros.index_add(0, rows, mean_logits)
    return SequenceLogps(logps, tokens, logits_sum.detach())


def sequence_logps(
    model: nn.Module, batch: SeqBatch, reduction: Reduction = "sum", fast: bool | None = None
) -> SequenceLogps:
    """Completion log-probs of every sequence; ``fast=None`` picks the path as described above."""
    mask = batch.completion_mask[:, 1:].bool()
    use_fast = _use_fast(model, batch, mask) if fast is None else fast
    targets = batch.input_ids[:, 1:][mask]
    if use_fast:
        hidden = model.get_decoder()(**_inputs(batch)).last_hidden_state  # type: ignore[operator]
        head = model.get_output_embeddings()  # type: ignore[operator]
        per_token = _head_token_logps(head, hidden[:, :-1][mask], targets)
    else:
        per_token = _token_logps(_completion_logits(model, batch, mask, False), targets)
    return _reduce(per_token, mask.nonzero()[:, 0], mask.sum(1), reduction)


def completion_log_probs(model: nn.Module, batch: SeqBatch) -> tuple[Tensor, Tensor]:
    """Full-vocabulary log-probs ``[N completion tokens, V]`` (float32) at the positions that
    predict completion tokens, and each position's row ``[N]``: a next-token distribution per
    completion token, for estimators that need more than the drawn token's log-prob."""
    mask = batch.completion_mask[:, 1:].bool()
    logits = _completion_logits(model, batch, mask, _use_fast(model, batch, mask))
    return torch.log_softmax(logits.float(), -1), mask.nonzero()[:, 0]


def cache_argument(model: nn.Module) -> str:
    """The KV-cache argument's name: ``cache`` (transformers >= 5.2x) or ``past_key_values``.

    Read from ``model.forward``'s signature; a wrapper that takes only ``**kwargs`` (a PEFT model,
    a patched forward) is answered by its decoder, which the same transformers version defines.
    """
    for module in (model, _decoder_of(model)):
        params = inspect.signature(module.forward).parameters if module is not None else {}
        for name in ("cache", "past_key_values"):
            if name in params:
                return name
    return "past_key_values"


def _decoder_of(model: nn.Module) -> nn.Module | None:
    try:
        return model.get_decoder()  # type: ignore[operator]
    except (AttributeError, NotImplementedError):
        return None


def _shared_prompt_logps(
    model: nn.Module, batch: SharedPromptBatch, reduction: Reduction
) -> SequenceLogps:
    """The prefix-sharing path; rows chosen-first like :func:`sequence_logps`."""
    decoder = model.get_decoder()  # type: ignore[operator]
    b = batch.num_pairs
    prompt_len = batch.prompt_mask.sum(1)
    prompt = decoder(
        input_ids=batch.prompt_ids,
        attention_mask=batch.prompt_mask,
        position_ids=(batch.prompt_mask.cumsum(1) - 1).clamp(min=0),
        use_cache=True,
    )
    cache_arg = cache_argument(decoder)
    cache = prompt[cache_arg]
    cache.batch_repeat_interleave(2)  # prompt i's cache for responses 2i and 2i + 1
    width = batch.completion_ids.shape[1]
    steps = torch.arange(width, device=prompt_len.device)
    hidden = decoder(
        input_ids=batch.completion_ids,
        # Prompt padding sits between prompt and response; the mask hides it.
        attention_mask=torch.cat(
            [batch.prompt_mask.repeat_interleave(2, 0), batch.completion_mask], 1
        ),
        position_ids=prompt_len.repeat_interleave(2)[:, None] + steps,
        use_cache=True,
        **{cache_arg: cache},
    ).last_hidden_state
    last_prompt = prompt.last_hidden_state[
        torch.arange(b, device=prompt_len.device), prompt_len - 1
    ]
    predicting = torch.cat([last_prompt.repeat_interleave(2, 0)[:, None], hidden[:, :-1]], 1)
    mask = batch.completion_mask.bool()
    head = model.get_output_embeddings()  # type: ignore[operator]
    per_token = _head_token_logps(head, predicting[mask], batch.completion_ids[mask])
    out = _reduce(per_token, mask.nonzero()[:, 0], mask.sum(1), reduction)
    # Interleaved (c0, r0, c1, r1, ...) -> chosen-first (c0, c1, ..., r0, r1, ...).
    order = torch.cat([torch.arange(0, 2 * b, 2), torch.arange(1, 2 * b, 2)]).to(mask.device)
    return SequenceLogps(out.logps[order], out.tokens[order], out.logits_sum[order])


def _use_shared(model: nn.Module, batch: SharedPromptBatch) -> bool:
    ok = getattr(model, _SHARED_OK, None)
    if ok is None:
        batch = batch.first(_CHECK_ROWS // 2)
        plain = batch.unshared()
        ok = _use_fast(model, plain, plain.completion_mask[:, 1:].bool())
        if ok:
            try:
                with _self_check(model):
                    shared = _shared_prompt_logps(model, batch, "sum").logps
                    ok = bool(
                        torch.allclose(shared, sequence_logps(model, plain).logps, 1e-4, 1e-3)
                    )
            except (AttributeError, TypeError, ValueError, RuntimeError):
                ok = False
        if not ok:
            warn_once(
                f"shared-prompt:{type(model).__name__}",
                f"{type(model).__name__}: prefix sharing is not exact for this model; "
                "running the prompt once per response instead",
            )
        setattr(model, _SHARED_OK, ok)
    return ok


def _checkpointing(model: nn.Module) -> bool:
    """Gradient checkpointing is on and active: its layers drop the KV cache that prefix
    sharing runs the responses on, so each response runs with its prompt instead."""
    if not (model.training and torch.is_grad_enabled()):
        return False
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def batch_logps(
    model: nn.Module, batch: SeqBatch | SharedPromptBatch, reduction: Reduction = "sum"
) -> SequenceLogps:
    """Completion log-probs of a batch of either layout (chosen rows first)."""
    if not isinstance(batch, SharedPromptBatch):
        return sequence_logps(model, batch, reduction)
    if not _checkpointing(model) and _use_shared(model, batch):
        return _shared_prompt_logps(model, batch, reduction)
    return sequence_logps(model, batch.unshared(), reduction)


class PolicyLogps(nn.Module):
    """Wraps a causal LM so that one ``forward`` returns completion log-probs.

    The trainer prepares this wrapper (not the bare LM) with Accelerate: under DDP the fast and
    shared-prompt paths' separate decoder and head calls then still go through one DDP ``forward``.
    """

    def __init__(self, model: nn.Module, reduction: Reduction = "sum") -> None:
        super().__init__()
        self.model = model
        self.reduction: Reduction = reduction

    def forward(
        self, batch: SeqBatch | SharedPromptBatch | Sequence[SeqBatch | SharedPromptBatch]
    ) -> tuple[Tensor, Tensor, Tensor] | list[tuple[Tensor, Tensor, Tensor]]:
        """``(logps, tokens, logits_sum)`` of a batch, or a list of them for a list of batches.

        A list (the length groups of one micro-batch, :mod:`gpo.train.length_groups`) runs in
        this one call, so DDP sees one forward and one backward per micro-step.
        """
        if isinstance(batch, (SeqBatch, SharedPromptBatch)):
            out = batch_logps(self.model, batch, self.reduction)
            return out.logps, out.tokens, out.logits_sum
        return [self.forward(b) for b in batch]  # type: ignore[misc]
