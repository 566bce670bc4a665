"""Run-time guards for `gpo train`: a writable run folder with room for checkpoints, and
non-finite losses or gradients caught at the step they appear (stop, or skip the step).

Kept out of ``train.py`` so the training step only calls them (a few lines).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gpo.io import new_run_dir


class TrainingError(RuntimeError):
    """Training cannot go on; the message says at which step and why."""


NonFinite = Literal["stop", "skip"]
MiB = 2**20


class RunDirError(ValueError):
    """The run folder cannot be created or written, or the disk is too full for checkpoints."""


def writable_run_dir(out: str | None, kind: str) -> Path:
    """Create the run folder and prove it writable, so a bad ``--out`` fails before any work."""
    where = out if out is not None else f"runs/{kind}-..."
    try:
        path = new_run_dir(out, kind)
        probe = path / f".gpo-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or str(e)
        raise RunDirError(
            f"run folder {where}: cannot write there ({reason}); pass a writable --out"
        ) from None
    return path


def checkpoint_bytes(model: nn.Module, trainable: Sequence[nn.Parameter], lora: bool) -> int:
    """About what one checkpoint takes: saved weights plus AdamW's two fp32 moments."""
    saved = trainable if lora else list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in saved)
    return weights + sum(2 * 4 * p.numel() for p in trainable)


def check_free_space(run_dir: Path, per_checkpoint: int, cfg: Any) -> None:
    """Refuse to start when the disk cannot hold the checkpoints the config will keep."""
    copies = (cfg.save_total_limit + 1 if cfg.save_total_limit > 0 else 2) if cfg.save_steps else 0
    need = per_checkpoint * copies + (per_checkpoint if cfg.save_final else 0)
    free = shutil.disk_usage(run_dir).free
    if need > free:
        raise RunDirError(
            f"run folder {run_dir}: only {free / MiB:.0f} MiB free, but checkpoints and the final "
            f"model need about {need / MiB:.0f} MiB ({copies} checkpoint(s) of "
            f"{per_checkpoint / MiB:.0f} MiB at once); free space, lower save_total_limit or "
            "pass another --out"
        )


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
