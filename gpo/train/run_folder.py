"""The run folder of `gpo train`: created and proved writable, checked against an earlier run
there (never written over, deleted only with ``--overwrite`` and only what that run recorded,
:mod:`gpo.train.run_record`), with room for the checkpoints, and the run's ``config.json``.
Everything here runs before the model loads, so a bad ``--out`` costs seconds."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from gpo.io import new_run_dir, write_json
from gpo.train.config import TrainConfig, saved_config
from gpo.train.resume import DATA_FINGERPRINT, check_config, nothing_to_resume
from gpo.train.run_record import RECORD, delete_recorded, output, recorded, recorded_outputs

MiB = 2**20

#: Names ``gpo train`` writes into a run folder: in a folder without a run record
#: (:mod:`gpo.train.run_record`) they are someone else's files, never written over or deleted.
RUN_OUTPUTS = (
    "config.json",
    "metrics.jsonl",
    "online_pairs.jsonl",
    "summary.json",
    "checkpoints",
    "final",
    ".tmp-final",
    "samples",
    "tensorboard",
    "wandb",
    "training.png",
    "kl_vs_mu_sq.png",
)


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


def _in_usual_order(names: list[str]) -> list[str]:
    return sorted(names, key=lambda n: RUN_OUTPUTS.index(n) if n in RUN_OUTPUTS else 99)


def check_old_run(cfg: TrainConfig) -> None:
    """A fresh run never writes over another run's files: those would mix with its own (old
    checkpoints rotate out the new ones, a later --resume loads another config's weights).
    ``overwrite`` deletes a gpo run's recorded files, later (:func:`clear_old_run`), once the new
    run has passed every check; a folder with such names but no record is refused either way."""
    if cfg.out is None or cfg.resume:
        return
    out = Path(cfg.out)
    found = _in_usual_order(recorded_outputs(out))
    if recorded(out) is not None:
        if found and not cfg.overwrite:
            raise ValueError(
                f"run folder {out} already holds a run ({', '.join(found)}): continue it with "
                "--resume, pass --overwrite to delete it and start again, or choose another --out"
            )
        return
    foreign = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if not foreign:
        return
    if (out / "config.json").is_file():
        raise ValueError(
            f"run folder {out} holds a run without a record of its files ({', '.join(foreign)}; "
            f"written before gpo kept {RECORD}): continue it with --resume, or choose another "
            "--out (--overwrite deletes only files a run recorded)"
        )
    raise ValueError(
        f"run folder {out} has {', '.join(foreign)}, which no gpo run recorded writing "
        f"(no {RECORD}): gpo neither writes into nor deletes them; choose another --out"
    )


def clear_old_run(cfg: TrainConfig, run_dir: Path) -> None:
    """With ``overwrite``: delete what the earlier run recorded writing; other files stay."""
    if cfg.resume or not cfg.overwrite or recorded(run_dir) is None:
        return
    deleted = _in_usual_order(delete_recorded(run_dir))
    if deleted:
        print(
            f"gpo: --overwrite: deleted the previous run's {', '.join(deleted)} in {run_dir} "
            "(files it did not write stay)"
        )


def start_writing(cfg: TrainConfig, run_dir: Path, fingerprint: str) -> None:
    """Clear an earlier run (``--overwrite``), then record exactly what this run runs."""
    clear_old_run(cfg, run_dir)
    saved = {**saved_config(cfg), DATA_FINGERPRINT: fingerprint}
    write_json(output(run_dir, "config.json"), saved)


def open_run_dir(cfg: TrainConfig, main: bool) -> tuple[Path | None, bool]:
    """The run folder, on the main process (None elsewhere), made writable and checked against
    an earlier run there; and whether this run created it. Nothing is written into it until the
    run passed every check (:meth:`gpo.train.trainer.Trainer._start_writing`)."""
    if nothing_to_resume(cfg):
        cfg.resume = False
        if main:
            print(f"gpo: nothing to resume in {cfg.out}: starting the run from scratch")
    if not main:
        return None, False
    check_old_run(cfg)
    created = cfg.out is None or not Path(cfg.out).exists()
    run_dir = writable_run_dir(cfg.out, "train")
    if cfg.resume:
        check_config(run_dir, cfg)
    return run_dir, created
