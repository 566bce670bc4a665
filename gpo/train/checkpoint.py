"""Atomic checkpoints: written to a temporary folder, fsynced, then renamed into place.

A checkpoint folder ``checkpoints/step-000100`` holds the model (LoRA adapter or full weights,
safetensors), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` (loaded with ``weights_only=True``)
and ``state.json``, which is written last: a folder without it is incomplete and ignored.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpo.train.faults import fault_point
from gpo.train.run_record import make_dir, record

STATE = "state.json"
SCALER = "scaler.pt"
FINAL = "final"


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():  # CUDA dropout and sampling draw from the device generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(_as_random_state(rng["python"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_final(run_dir: Path, model: nn.Module, tokenizer: Any) -> Path:
    """Write ``final/`` atomically: into a temporary folder, then renamed into place, so a
    ``final/`` folder is always whole (a kill leaves the old one, or none)."""
    final, tmp = run_dir / FINAL, run_dir / f".tmp-{FINAL}"
    record(run_dir, tmp.name, "tree")
    record(run_dir, final.name, "tree")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)  # type: ignore[operator]
        tokenizer.save_pretrained(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


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
    scaler: Any = None,
) -> Path:
    """Write checkpoint ``step`` atomically (weights, optimizer, scheduler, RNG, state, and the
    tokenizer, so the folder loads on its own), then keep the newest ``keep``."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    try:
        make_dir(run_dir, root.name)
        record(run_dir, tmp.relative_to(run_dir), "tree")
        record(run_dir, final.relative_to(run_dir), "tree")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True)  # type: ignore[operator]
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        fault_point("weights", step)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        fault_point("optimizer", step)
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        if scaler is not None:  # fp16: the GradScaler's scale and growth tracker
            torch.save(scaler.state_dict(), tmp / SCALER)
        fault_point("rng", step)
        (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=2))
        fault_point("state", step)
        _fsync_tree(tmp)
    except Exception as e:  # ENOSPC, EFBIG...: torch.save raises RuntimeError, safetensors its own
        shutil.rmtree(tmp, ignore_errors=True)  # drop the partial copy; older ones are untouched
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        raise CheckpointError(
            f"cannot write checkpoint {final} ({' '.join(str(reason).split())}); the previous "
            "checkpoints are kept and --resume continues from the newest"
        ) from e
    _remove(final)
    os.replace(tmp, final)
    _fsync_tree(root)
    fault_point("renamed", step)
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        _remove(old)
    fault_point("rotated", step)
    return final


def _read_weights(ckpt: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The checkpoint's weights, read into memory, and whether they are a LoRA adapter."""
    from safetensors.torch import load_file

    adapter = ckpt / "adapter_model.safetensors"
    if adapter.exists():
        return load_file(adapter), True
    files = sorted(ckpt.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{ckpt}: no model weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(f))
    return weights, False


def _check_weights(
    model: nn.Module, ckpt: Path, weights: dict[str, torch.Tensor], lora: bool
) -> None:
    """Names and shapes must match before anything is copied (a mismatch would be found by
    ``load_state_dict`` only after it had copied the tensors that do match)."""
    if lora:
        from peft import get_peft_model_state_dict

        own = get_peft_model_state_dict(model)
        missing = [k for k in own if k not in weights]
    else:
        own = model.state_dict()
        missing = [k for k in own if k not in weights and "lm_head" not in k]  # may be tied
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in weights if k in own and weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{ckpt}: weights do not match the model ({missing[:3]}, {unexpected[:3]}, "
            f"shapes {shapes[:3]})"
        )


def _check_optimizer(optimizer: torch.optim.Optimizer, ckpt: Path, saved: Any) -> None:
    """The saved optimizer state must fit these parameters (group sizes, moment shapes)."""
    mismatch = ValueError(f"{ckpt}: optimizer.pt does not match the trained parameters")
    try:
        groups = [list(g["params"]) for g in saved["param_groups"]]
        ours = [list(g["params"]) for g in optimizer.param_groups]
        if [len(g) for g in groups] != [len(g) for g in ours]:
            raise mismatch
        by_id = {i: p for g, o in zip(groups, ours, strict=True) for i, p in zip(g, o, strict=True)}
        for i, moments in saved["state"].items():
            shapes = {v.shape for k, v in moments.items() if k != "step" and torch.is_tensor(v)}
            if not shapes <= {by_id[i].shape}:
                raise mismatch
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{ckpt}: optimizer.pt is not an optimizer state ({e!r})") from None


def _load_weights(model: nn.Module, weights: dict[str, torch.Tensor], lora: bool) -> None:
    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
    else:
        model.load_state_dict(weights, strict=False)


def load_checkpoint(
    ckpt: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any = None,
) -> dict[str, Any]:
    """Restore everything saved by :func:`save_checkpoint`; return its ``state.json``.

    Every file is read and checked first, and the weights are loaded before the optimizer and
    scheduler; a failure on the way puts back what was already changed, so a damaged
    checkpoint leaves the model, optimizer, scheduler and RNG as they were."""
    state = json.loads((ckpt / STATE).read_text())
    weights, lora = _read_weights(ckpt)
    optim = torch.load(ckpt / "optimizer.pt", weights_only=True)
    sched = torch.load(ckpt / "scheduler.pt", weights_only=True)
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    scaled = torch.load(ckpt / SCALER, weights_only=True) if (ckpt / SCALER).is_file() else None
    _check_weights(model, ckpt, weights, lora)
    _check_optimizer(optimizer, ckpt, optim)
    # LoRA's adapters are small enough to keep aside; full weights were checked name by name
    # and shape by shape, so their load_state_dict has nothing left to fail on.
    kept = {n: p.detach().clone() for n, p in model.named_parameters() if lora and p.requires_grad}
    before = copy.deepcopy(optimizer.state_dict()), copy.deepcopy(scheduler.state_dict())
    try:
        _load_weights(model, weights, lora)
        optimizer.load_state_dict(optim)
        scheduler.load_state_dict(sched)
    except Exception:
        model.load_state_dict(kept, strict=False)
        optimizer.load_state_dict(before[0])
        scheduler.load_state_dict(before[1])
        raise
    if scaler is not None and scaled is not None:
        scaler.load_state_dict(scaled)
    _set_rng_state(rng)
    return state


def _as_random_state(value: Any) -> tuple[Any, ...]:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def _is_damage(e: BaseException) -> bool:
    """An error that says the checkpoint is damaged (missing, truncated, mismatched or refused
    files), not one that says the machine ran out of memory: an OOM while loading must stop
    the run, not send it back to an older checkpoint or to step 0."""
    return not isinstance(e, (MemoryError, torch.OutOfMemoryError))


def latest_usable_checkpoint(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any = None,
) -> dict[str, Any] | None:
    """Load the newest checkpoint that loads cleanly, falling back to older ones with a message."""
    for ckpt in reversed(checkpoint_dirs(run_dir)):
        try:
            return load_checkpoint(ckpt, model, optimizer, scheduler, scaler)
        except Exception as e:
            if not _is_damage(e):
                raise
            print(
                f"gpo: checkpoint {ckpt} is damaged ({type(e).__name__}: {e}); trying an older one"
            )
    return None
