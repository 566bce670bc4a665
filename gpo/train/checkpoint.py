"""Atomic checkpoints: written to a temporary folder, fsynced, then renamed into place.

A checkpoint folder ``checkpoints/step-000100`` holds the model (LoRA adapter or full weights,
safetensors), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` (loaded with ``weights_only=True``)
and ``state.json``, which is written last: a folder without it is incomplete and ignored.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpo.train.faults import fault_point

STATE = "state.json"


class CheckpointError(OSError):
    """A checkpoint could not be written (disk full, permissions); older ones are intact."""


def _fsync_tree(path: Path) -> None:
    for p in [*sorted(path.rglob("*")), path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(ckpt: Path) -> None:
    """Delete ``state.json`` first: a removal cut short leaves an incomplete (ignored) folder."""
    (ckpt / STATE).unlink(missing_ok=True)
    shutil.rmtree(ckpt, ignore_errors=True)


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
    tokenizer: Any = None,
) -> Path:
    """Write checkpoint ``step`` atomically (weights, optimizer, scheduler, RNG, state, and the
    tokenizer, so the folder loads on its own), then keep the newest ``keep``."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True)  # type: ignore[operator]
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        fault_point("weights", step)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        fault_point("optimizer", step)
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
        fault_point("rng", step)
        (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=2))
        fault_point("state", step)
        _fsync_tree(tmp)
    except OSError as e:  # e.g. ENOSPC: drop the partial copy; older checkpoints are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"cannot write checkpoint {final} ({e.strerror or e}); the previous checkpoints are "
            "kept and --resume continues from the newest"
        ) from e
    _remove(final)
    os.replace(tmp, final)
    _fsync_tree(root)
    fault_point("renamed", step)
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        _remove(old)
    fault_point("rotated", step)
    return final


def _load_weights(model: nn.Module, ckpt: Path) -> None:
    from safetensors.torch import load_file

    adapter = ckpt / "adapter_model.safetensors"
    if adapter.exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(adapter))
        return
    files = sorted(ckpt.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{ckpt}: no model weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(f))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:  # lm_head may be tied
        raise ValueError(
            f"{ckpt}: weights do not match the model ({missing[:3]}, {unexpected[:3]})"
        )


def load_checkpoint(
    ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore everything saved by :func:`save_checkpoint`; return its ``state.json``."""
    state = json.loads((ckpt / STATE).read_text())
    _load_weights(model, ckpt)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    random.setstate(_as_random_state(rng["python"]))
    return state


def _as_random_state(value: Any) -> tuple[Any, ...]:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def latest_usable_checkpoint(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any] | None:
    """Load the newest checkpoint that loads cleanly, falling back to older ones with a message."""
    for ckpt in reversed(checkpoint_dirs(run_dir)):
        try:
            return load_checkpoint(ckpt, model, optimizer, scheduler)
        except Exception as e:  # a damaged checkpoint: say so and try the previous one
            print(
                f"gpo: checkpoint {ckpt} is damaged ({type(e).__name__}: {e}); trying an older one"
            )
    return None
