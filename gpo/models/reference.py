"""The reference policy pi_ref: the LoRA model with adapters off, or a frozen copy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from gpo.data.collate import SeqBatch, SharedPromptBatch
from gpo.models.loading import is_peft
from gpo.models.logps import Reduction, SequenceLogps, batch_logps, completion_log_probs
from gpo.models.ref_cache import RefLogpCache, model_fingerprint, pair_keys


class Reference:
    """Gives pi_ref without a second copy when the policy is a PEFT model."""

    def __init__(self, policy: nn.Module, frozen: nn.Module | None = None) -> None:
        if frozen is None and not is_peft(policy):
            raise ValueError("a reference needs a PEFT policy (adapters off) or a frozen copy")
        self._policy = policy
        self._frozen = frozen
        self.cache: RefLogpCache | None = None  # see use_cache
        self.seconds = 0.0  # spent in its forward passes (logps), in all

    def fingerprint(self, extra: str = "") -> str:
        """Hash of the reference network (see :func:`gpo.models.ref_cache.model_fingerprint`)."""
        with self.model() as ref:
            return model_fingerprint(ref, extra)

    def use_cache(self, folder: str | Path) -> RefLogpCache:
        """Read and store pair log-probs in ``folder`` (which must be this reference's own)."""
        self.cache = RefLogpCache(folder)
        return self.cache

    def to(self, device: torch.device | str) -> Reference:
        """Move a frozen copy to ``device`` (the shared LoRA model moves with the policy)."""
        if self._frozen is not None:
            self._frozen.to(device)
        return self

    @contextmanager
    def model(self) -> Iterator[nn.Module]:
        """The reference network, usable inside the ``with`` block (no gradients needed)."""
        if self._frozen is not None:
            yield self._frozen
            return
        ctx = self._policy.disable_adapter()  # type: ignore[operator]
        with ctx if ctx is not None else nullcontext():
            yield self._policy

    @torch.no_grad()
    def logps(
        self, batch: SeqBatch | SharedPromptBatch, reduction: Reduction = "sum"
    ) -> SequenceLogps:
        """Reference log-probs of ``batch``; pair batches go through the cache when one is set.

        Cached results carry zero ``logits_sum`` (no logits are computed for them).
        """
        keys = pair_keys(batch) if self.cache is not None else None
        if self.cache is None or keys is None:
            return self._compute(batch, reduction)
        hit = self.cache.get(keys)
        if hit is None:
            out = self._compute(batch, "sum")
            self.cache.put(keys, out.logps, out.tokens)
            sums, tokens = out.logps, out.tokens
        else:
            device = _device_of(batch)
            sums, tokens = hit[0].to(device), hit[1].to(device)
        logps = sums / tokens.clamp(min=1) if reduction == "mean" else sums
        return SequenceLogps(logps, tokens, torch.zeros_like(sums))

    def _compute(self, batch: SeqBatch | SharedPromptBatch, reduction: Reduction) -> SequenceLogps:
        start = time.perf_counter()
        try:
            return self._forward(batch, reduction)
        finally:
            self.seconds += time.perf_counter() - start

    def _forward(self, batch: SeqBatch | SharedPromptBatch, reduction: Reduction) -> SequenceLogps:
        with self._evaluating() as ref:
            return batch_logps(ref, batch, reduction)

    @torch.no_grad()
    def completion_log_probs(self, batch: SeqBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """pi_ref's full next-token log-probs at ``batch``'s completion positions
        (:func:`gpo.models.logps.completion_log_probs`); never cached."""
        start = time.perf_counter()
        try:
            with self._evaluating() as ref:
                return completion_log_probs(ref, batch)
        finally:
            self.seconds += time.perf_counter() - start

    @contextmanager
    def _evaluating(self) -> Iterator[nn.Module]:
        """The reference network in eval mode (no dropout), its mode restored afterwards."""
        with self.model() as ref:
            was_training = ref.training
            ref.eval()
            try:
                yield ref
            finally:
                ref.train(was_training)


def _device_of(batch: SeqBatch | SharedPromptBatch) -> torch.device:
    first = batch.prompt_ids if isinstance(batch, SharedPromptBatch) else batch.input_ids
    return first.device
