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
- **Geometric mixture** (:class:`Mixture`, IPO-MD): pi_ref decodes beside the policy with its
  own KV cache (the same prefill, row repeat and compaction), and each token is drawn from the
  normalized ``pi_theta^(1 - alpha) * pi_ref^alpha`` of that position.

Distribution: ancestral sampling over the full vocabulary at ``temperature`` (``top_p`` < 1:
nucleus filtering as transformers' ``TopPLogitsWarper`` defines it); ``temperature == 0`` is
greedy. Logits are taken in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Mixture:
    """Sample from the normalized geometric mixture ``pi_theta^(1 - alpha) * pi_ref^alpha``,
    token by token: the sampling policy of IPO-MD (Calandriello et al. 2024, "Human alignment
    of large language models through online preference optimisation", §4, arXiv 2403.08635).
    At each position the logits drawn from are ``(1 - alpha) log_softmax(l_theta) +
    alpha log_softmax(l_ref)`` (then the temperature and top-p as usual); ``alpha`` 0 is the
    policy itself. ``reference()`` enters a context that yields pi_ref's network (entered for
    every forward call: for a LoRA policy sampled unmerged, pi_ref is the same module with its
    adapters off)."""

    reference: Callable[[], AbstractContextManager[Any]]
    alpha: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"the mixture's alpha must be in [0, 1), got {self.alpha}")


class _Batch:
    """The rows still decoding: their cache rows (and pi_ref's, for a mixture), attention mask,
    next positions, ids."""

    def __init__(self, caches: list[Any], mask: Tensor, positions: Tensor, rows: Tensor) -> None:
        self.caches, self.mask, self.positions, self.rows = caches, mask, positions, rows

    def select(self, keep: Tensor) -> None:
        for cache in self.caches:
            take_cache_rows(cache, keep)
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
    mixture: Mixture | None = None,
) -> list[list[int]]:
    """``num_samples`` completions per prompt (prompt-major), each cut after its first EOS."""
    args = (eos, pad, temperature, top_p, generator, False, mixture)
    return decode_with_logps(model, prompts, num_samples, max_new_tokens, *args)[0]


class _Net:
    """One network of the loop (the policy, or pi_ref for a mixture) and how it is called."""

    def __init__(self, model: Any, enter: Callable[[], AbstractContextManager[Any]] | None):
        self.model, self.enter = model, enter
        self.cache_arg = cache_argument(model)

    def __call__(self, cache: Any, **inputs: Any) -> Tensor:
        if self.enter is None:
            out = self.model(use_cache=True, **inputs, **{self.cache_arg: cache})
        else:
            with self.enter() as net:
                out = net(use_cache=True, **inputs, **{self.cache_arg: cache})
        return out.logits[:, -1].float()


def _mixed(logits: list[Tensor], mixture: Mixture | None) -> Tensor:
    """The logits to draw from: the policy's, or the geometric mixture's (log space)."""
    if mixture is None:
        return logits[0]
    a = mixture.alpha
    return (1 - a) * logits[0].log_softmax(-1) + a * logits[1].log_softmax(-1)


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
    mixture: Mixture | None = None,
) -> tuple[list[list[int]], list[float] | None]:
    """:func:`decode`, plus each completion's log-probability under ``model`` itself (untempered,
    EOS included, also when the tokens come from a ``mixture``), summed from the logits the loop
    computes anyway: scoring the samples again (e.g. for a KL estimate) would repeat a forward
    pass over every completion."""
    nets = [_Net(model, None)]
    if mixture is not None:
        with mixture.reference() as ref:
            nets.append(_Net(ref, mixture.reference))
    device = next(model.parameters()).device
    batch, logits, width = _prefill(nets, prompts, num_samples, max_new_tokens, pad, device)
    rows = batch.rows
    eos_t = torch.tensor(sorted(eos), device=device)
    tokens = torch.full((len(rows), max_new_tokens), pad, dtype=torch.long, device=device)
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    seq_logps = torch.zeros(len(rows), device=device)
    compact = all(can_compact(cache) for cache in batch.caches)
    for t in range(max_new_tokens):
        nxt = pick_tokens(_mixed(logits, mixture), temperature, top_p, generator)
        tokens[batch.rows, t] = nxt
        if want_logps:  # rows already past their EOS add nothing
            own = logits[0]
            lp = own.gather(1, nxt[:, None]).squeeze(1) - own.logsumexp(-1)
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
        inputs = {
            "input_ids": nxt[:, None],
            "attention_mask": batch.mask[:, : width + t + 1],
            "position_ids": batch.positions[:, None],
            "cache_position": torch.tensor([width + t], device=device),
        }
        logits = [net(cache, **inputs) for net, cache in zip(nets, batch.caches, strict=True)]
        batch.positions = batch.positions + 1
    logps = seq_logps.tolist() if want_logps else None
    return [_cut(row, eos) for row in tokens.tolist()], logps


def _prefill(
    nets: list[_Net],
    prompts: Sequence[Sequence[int]],
    num_samples: int,
    max_new_tokens: int,
    pad: int,
    device: torch.device,
) -> tuple[_Batch, list[Tensor], int]:
    """One prompt pass per network (its own preallocated cache), the cache rows and last
    logits repeated for every sample of a prompt; returns the batch, the logits, the width."""
    from transformers import StaticCache

    ids, mask = pad_rows(prompts, pad, "left")
    ids, mask = ids.to(device), mask.to(device)
    width = ids.shape[1]
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    caches, logits = [], []
    for net in nets:
        cache = StaticCache(config=net.model.config, max_cache_len=width + max_new_tokens)
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        logits.append(net(cache, logits_to_keep=1, **inputs))
        caches.append(cache)
    rows = torch.arange(len(prompts) * num_samples, device=device)
    full = torch.zeros(len(rows), width + max_new_tokens, dtype=mask.dtype, device=device)
    batch = _Batch(caches, full, positions[:, -1] + 1, rows)
    batch.mask[:, :width] = mask.repeat_interleave(num_samples, 0)
    if num_samples > 1:  # one prompt pass, its cache rows repeated for every sample
        repeat = torch.arange(len(prompts), device=device).repeat_interleave(num_samples)
        logits, batch.positions = [x[repeat] for x in logits], batch.positions[repeat]
        for cache in caches:
            take_cache_rows(cache, repeat)
    return batch, logits, width


def _cut(ids: list[int], eos: set[int]) -> list[int]:
    for k, t in enumerate(ids):
        if t in eos:
            return ids[: k + 1]
    return ids
