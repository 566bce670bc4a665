"""The reference policy pi_ref: the LoRA model with adapters off, or a frozen copy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from gpo.data.collate import SeqBatch, SharedPromptBatch
from gpo.logps import Reduction, SequenceLogps, batch_logps
from gpo.models import is_peft


class Reference:
    """Gives pi_ref without a second copy when the policy is a PEFT model."""

    def __init__(self, policy: nn.Module, frozen: nn.Module | None = None) -> None:
        if frozen is None and not is_peft(policy):
            raise ValueError("a reference needs a PEFT policy (adapters off) or a frozen copy")
        self._policy = policy
        self._frozen = frozen

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
        with self.model() as ref:
            was_training = ref.training
            ref.eval()
            try:
                return batch_logps(ref, batch, reduction)
            finally:
                ref.train(was_training)
