"""gpo's own decode loop for Hugging Face causal LMs: what ``sampling.sample`` runs when it can.

Compared with ``model.generate`` on CPU (docs/performance.md has the numbers):

- **Preallocated KV cache** (transformers' ``StaticCache``): every step writes in place, where
  the default dynamic cache concatenates, i.e. copies the whole cache of every layer each step.
- **One prefill per prompt**: ``num_samples`` completions of a prompt share its prompt pass; the
  cache rows are repeated afterwards. Only the last prompt position goes through the LM head.
- **Finished rows leave the batch**: once a quarter of the rows have ended with EOS, the batch
  (cache included) is compacted to the rows still running.
- **Sampling by inverse CDF**: one uniform number per row and a ``searchsorted`` over the
  cumulative probabilities, the same distribution as ``torch.multinomial`` at a tenth of its
  cost on CPU (which draws over the whole 49k vocabulary per row).
- **Either cache argument**: the cache goes in as ``cache`` (transformers >= 5.2x) or
  ``past_key_values`` (older), whichever the model's forward names
  (:func:`gpo.models.logps.cache_argument`).
- **Log-probs for free**: :func:`decode_with_logps` also sums each completion's log-probability
  from the logits it already has, so a KL estimate need not score the policy's samples again.

Distribution: ancestral sampling over the full vocabulary at ``temperature`` (``top_p`` < 1:
nucleus filtering as transformers' ``TopPLogitsWarper`` defines it); ``temperature == 0`` is
greedy. Logits are taken in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gpo.data.collate import pad_rows
from gpo.models.logps import cache_argument

#: Compact the batch once at least this share of its rows has finished.
COMPACT_AT = 0.25


def pick_tokens(
    logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> Tensor:
    """One token per row of ``logits`` [R, V]: greedy at temperature 0, else a draw."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1.0:
        probs = _nucleus(probs, top_p)
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * total
    # Token i owns [cdf[i-1], cdf[i]): ``right=True`` gives the first cdf above u, so a token of
    # probability 0 (cut by top-p, or a -inf logit) is never drawn, not even at u = 0; u stays
    # below the total, which rand * total can round up to.
    u = torch.minimum(u, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1).squeeze(1)


def _nucleus(probs: Tensor, top_p: float) -> Tensor:
    """Zero the tail outside the smallest set of tokens whose probability reaches ``top_p``."""
    sorted_p, order = probs.sort(-1, descending=True)
    outside = sorted_p.cumsum(-1) - sorted_p > top_p  # mass before a token already reaches top_p
    sorted_p[outside] = 0.0
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p)


class _Batch:
    """The rows still decoding: their cache rows, attention mask, next positions, ids."""

    def __init__(self, cache: Any, mask: Tensor, positions: Tensor, rows: Tensor) -> None:
        self.cache, self.mask, self.positions, self.rows = cache, mask, positions, rows

    def select(self, keep: Tensor) -> None:
        take_cache_rows(self.cache, keep)
        self.mask, self.positions, self.rows = (
            self.mask[keep],
            self.positions[keep],
            self.rows[keep],
        )


def take_cache_rows(cache: Any, index: Tensor) -> None:
    """Keep (or repeat) the cache rows ``index``, in that order, in every layer."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)
        for name in ("batch_size", "max_batch_size"):  # the row count: transformers 5.x, 4.5x
            if hasattr(layer, name):
                setattr(layer, name, len(index))


def can_compact(cache: Any) -> bool:
    return all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in cache.layers)


def decode(
    model: Any,
    prompts: Sequence[Sequence[int]],
    num_samples: int,
    max_new_tokens: int,
    eos: set[int],
    pad: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """``num_samples`` completions per prompt (prompt-major), each cut after its first EOS."""
    args = (eos, pad, temperature, top_p, generator)
    return decode_with_logps(model, prompts, num_samples, max_new_tokens, *args, False)[0]


@torch.inference_mode()
def decode_with_logps(
    model: Any,
    prompts: Sequence[Sequence[int]],
    num_samples: int,
    max_new_tokens: int,
    eos: set[int],
    pad: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    want_logps: bool = True,
) -> tuple[list[list[int]], list[float] | None]:
    """:func:`decode`, plus each completion's log-probability under ``model`` itself (untempered,
    EOS included), summed from the logits the loop computes anyway: scoring the samples again
    (e.g. for a KL estimate) would repeat a forward pass over every completion."""
    from transformers import StaticCache

    device = next(model.parameters()).device
    ids, mask = pad_rows(prompts, pad, "left")
    ids, mask = ids.to(device), mask.to(device)
    width = ids.shape[1]
    cache = StaticCache(config=model.config, max_cache_len=width + max_new_tokens)
    cache_arg = cache_argument(model)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **{cache_arg: cache},
    )
    logits = out.logits[:, -1].float()
    rows = torch.arange(len(prompts) * num_samples, device=device)
    full = torch.zeros(len(rows), width + max_new_tokens, dtype=mask.dtype, device=device)
    batch = _Batch(cache, full, positions[:, -1] + 1, rows)
    batch.mask[:, :width] = mask.repeat_interleave(num_samples, 0)
    if num_samples > 1:  # one prompt pass, its cache rows repeated for every sample
        repeat = torch.arange(len(prompts), device=device).repeat_interleave(num_samples)
        logits, batch.positions = logits[repeat], batch.positions[repeat]
        take_cache_rows(cache, repeat)
    eos_t = torch.tensor(sorted(eos), device=device)
    tokens = torch.full((len(rows), max_new_tokens), pad, dtype=torch.long, device=device)
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    seq_logps = torch.zeros(len(rows), device=device)
    compact = can_compact(cache)
    for t in range(max_new_tokens):
        nxt = pick_tokens(logits, temperature, top_p, generator)
        tokens[batch.rows, t] = nxt
        if want_logps:  # rows already past their EOS add nothing
            lp = logits.gather(1, nxt[:, None]).squeeze(1) - logits.logsumexp(-1)
            seq_logps[batch.rows] += torch.where(done[batch.rows], 0.0, lp)
        ended = torch.isin(nxt, eos_t)
        done[batch.rows[ended]] = True
        if t == max_new_tokens - 1 or bool(done[batch.rows].all()):
            break
        running = ~done[batch.rows]
        if compact and (~running).sum() >= COMPACT_AT * len(running):
            keep = running.nonzero().squeeze(1)
            batch.select(keep)
            nxt = nxt[keep]
        batch.mask[:, width + t] = 1
        out = model(
            input_ids=nxt[:, None],
            attention_mask=batch.mask[:, : width + t + 1],
            position_ids=batch.positions[:, None],
            cache_position=torch.tensor([width + t], device=device),
            use_cache=True,
            **{cache_arg: batch.cache},
        )
        logits = out.logits[:, -1].float()
        batch.positions = batch.positions + 1
    logps = seq_logps.tolist() if want_logps else None
    return [_cut(row, eos) for row in tokens.tolist()], logps


def _cut(ids: list[int], eos: set[int]) -> list[int]:
    for k, t in enumerate(ids):
        if t in eos:
            return ids[: k + 1]
    return ids
