"""Run-time guards for `gpo train`: non-finite losses or gradients caught at the step they
appear (stop, or skip the step), and a flag all processes agree on. The run folder's checks
(writable, room for checkpoints) are :mod:`gpo.train.run_folder`'s.

Kept out of ``trainer.py`` so the training step only calls them (a few lines).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn


class TrainingError(RuntimeError):
    """Training cannot go on; the message says at which step and why."""


NonFinite = Literal["stop", "skip"]


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True if ``flag`` is true on any process (one all-reduce under DDP), so all ranks agree."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _grad_norm(params: Sequence[nn.Parameter]) -> Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class NonFiniteGuard:
    """Watches the losses of one optimizer step's micro-steps and the step's gradients.

    ``stop`` raises (the caller's last checkpoint stays the newest); ``skip`` drops the update
    and counts it. The decision is all-reduced, so every DDP rank stops or skips together.
    """

    def __init__(self, mode: NonFinite, device: torch.device | str, check_grads: bool = True):
        if mode not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {mode!r}")
        self.mode = mode
        self.device = device
        # With fp16 mixed precision the GradScaler already skips steps with inf gradients.
        self.check_grads = check_grads
        self.skipped = 0
        self._watched: list[tuple[int, Tensor, Tensor]] = []  # (micro, finite?, rows)

    def watch_loss(self, loss: Tensor, micro: int, rows: Tensor) -> None:
        """Record a micro-step's loss; no host sync here (that happens once, in ``step_ok``)."""
        self._watched.append((micro, torch.isfinite(loss.detach()), rows))

    def step_ok(self, step: int, params: Sequence[nn.Parameter], grad_norm: Tensor | None) -> bool:
        """Call after backward and clipping, before ``optimizer.step``: False means skip it."""
        watched, self._watched = self._watched, []
        bad = [(m, rows) for m, ok, rows in watched if not bool(ok)]
        grads_bad = False
        if self.check_grads:
            norm = grad_norm if grad_norm is not None else _grad_norm(params)
            grads_bad = not bool(torch.isfinite(torch.as_tensor(norm)))
        if not any_rank(bool(bad) or grads_bad, self.device):
            return True
        if bad:
            what = "loss"
            where = "; ".join(f"micro-step {m}, batch rows {rows.tolist()}" for m, rows in bad)
        elif grads_bad:
            what = "gradients"
            rows = sorted({int(i) for _, _, r in watched for i in r.tolist()})
            where = f"batch rows {rows}"
        else:
            what, where = "loss or gradients", "on another process"
        message = f"non-finite {what} at step {step} ({where})"
        if self.mode == "stop":
            raise TrainingError(
                f"{message}; the last checkpoint is kept (on_nonfinite=skip skips such steps)"
            )
        self.skipped += 1
        print(f"gpo: skipped step {step}: {message}; {self.skipped} step(s) skipped so far")
        return False
