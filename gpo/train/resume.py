"""Can this run continue, and from where? Every resume decision of ``gpo train`` in one place.

A run continues from its newest checkpoint that loads cleanly, and only when nothing that changes
the optimisation differs from what it ran with: the config (but for :data:`RESUMABLE_CHANGES`),
the tokenized pairs (a fingerprint in ``config.json``: the same ``--data`` path can hold other
contents), and the number of processes (in each checkpoint's ``state.json``: it sets the global
batch and the position in the data order). Anything else is refused, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Sequence
from dataclasses import MISSING
from pathlib import Path
from typing import Any

from gpo.data.tokenize import TokenizedPair
from gpo.train.checkpoint import STATE, checkpoint_dirs
from gpo.train.config import TrainConfig, saved_config

#: Config keys that may differ when resuming (they do not change the optimisation).
RESUMABLE_CHANGES = {
    "resume",
    "progress",
    "out",
    "max_steps",
    "save_steps",
    "save_total_limit",
    "report_to",
    "run_name",
    "wandb_project",
    "wandb_entity",
    "logging_steps",
    "eval_steps",
    "eval_schedule",
    "save_final",
    "ref_cache",
    "on_nonfinite",
    "reuse_host_memory",
    "flush_denormals",  # changes only values below 1.2e-38, which no AdamW step can see
    "num_epochs",
    "overwrite",
    "max_padding",  # length groups change only the float summation order, not the step
    "gradient_checkpointing",  # recomputes the same activations: same gradients
}

#: ``config.json``'s key for :func:`data_fingerprint` (beside the TrainConfig fields).
DATA_FINGERPRINT = "data_fingerprint"
#: ``state.json``'s key for the number of processes that wrote the checkpoint.
PROCESSES = "num_processes"


def _as_saved_before(key: str, saved: dict[str, Any]) -> Any:
    """The value a run saved before ``key`` existed ran with: its default, except where the
    default changed the behaviour (the LR brake did not exist: gain 0)."""
    if key == "kl_lr_gain" and saved.get("kl_target") is not None:
        return 0.0
    spec = TrainConfig.__dataclass_fields__[key]
    return spec.default_factory() if spec.default is MISSING else spec.default  # type: ignore[misc]


def saved_run_config(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "config.json").read_text())


def check_config(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse a config that changes the optimisation; say when the LR schedule is rebuilt."""
    saved = saved_run_config(run_dir)
    if cfg.max_length is None:  # the default: the length the run resolved for its model
        cfg.max_length = saved.get("max_length")
    now = saved_config(cfg)  # compared as saved: secrets in URLs are redacted in both
    saved = {k: saved[k] if k in saved else _as_saved_before(k, saved) for k in now}
    differ = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved[k] != now[k])
    if differ:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in differ)
        raise ValueError(f"refusing to resume {run_dir}: config differs ({detail})")
    old = saved.get("max_steps")
    if old != cfg.max_steps and (cfg.lr_scheduler != "constant" or cfg.warmup_ratio > 0):
        print(
            f"gpo: max_steps changed from {old} to {cfg.max_steps} on resume: the "
            f"{cfg.lr_scheduler} learning-rate schedule (and its warm-up) now spans "
            f"{cfg.max_steps} steps, continued from the checkpoint's step"
        )


def data_fingerprint(train: Sequence[TokenizedPair], held_out: Sequence[TokenizedPair]) -> str:
    """SHA-256 of the tokenized training and held-out pairs, in order (rows and token ids)."""
    digest = hashlib.sha256()
    for part, pairs in (("train", train), ("eval", held_out)):
        digest.update(f"{part}:{len(pairs)};".encode())
        for p in pairs:
            for ids in ([p.index], p.prompt_ids, p.chosen_ids, p.rejected_ids):
                digest.update(len(ids).to_bytes(4, "little"))
                digest.update(array("q", ids).tobytes())
    return digest.hexdigest()[:32]


def check_data(run_dir: Path, fingerprint: str) -> None:
    """Refuse to continue on other pairs than the run trained on (runs saved before the
    fingerprint existed cannot be checked, and are not)."""
    saved = saved_run_config(run_dir).get(DATA_FINGERPRINT)
    if saved is not None and saved != fingerprint:
        raise ValueError(
            f"refusing to resume {run_dir}: the tokenized data differ from the run's (fingerprint "
            f"{saved} -> {fingerprint}): the data files changed since, or the tokenizer did; "
            "start a new run with another --out"
        )


def check_processes(run_dir: Path, processes: int) -> None:
    """Refuse another number of processes than the newest checkpoint was written by: the global
    batch and the data position would change (checkpoints saved before it was recorded pass)."""
    found = checkpoint_dirs(run_dir)
    if not found:
        return
    saved = json.loads((found[-1] / STATE).read_text()).get(PROCESSES)
    if saved is not None and saved != processes:
        raise ValueError(
            f"refusing to resume {run_dir}: its checkpoints were written by {saved} process(es), "
            f"this run has {processes}: the global batch (batch_size x processes) and the position "
            f"in the data order would change; resume with {saved} process(es)"
        )


def nothing_to_resume(cfg: TrainConfig) -> bool:
    """``--resume`` on a folder without a run (e.g. a requeued job that died while starting):
    the run starts from scratch instead."""
    if cfg.resume and cfg.out is None:
        raise ValueError("--resume needs --out: the run folder to continue")
    return cfg.resume and not (Path(cfg.out or "") / "config.json").exists()


def finished_summary(cfg: TrainConfig) -> dict[str, Any] | None:
    """The summary of a run that already finished ``cfg.max_steps`` (resuming it does nothing)."""
    done = Path(cfg.out or "") / "summary.json"
    if not (cfg.resume and cfg.out is not None and done.is_file()):
        return None
    check_config(Path(cfg.out), cfg)  # a changed optimisation is refused here too
    summary: dict[str, Any] = json.loads(done.read_text())
    return summary if summary.get("steps", 0) >= cfg.max_steps else None
