"""Metric sinks for a run: ``metrics.jsonl`` always, TensorBoard and W&B when asked."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from gpo.io import read_jsonl, write_json
from gpo.train.config import saved_config
from gpo.train.run_record import make_dir, output, record

#: Where a run keeps its W&B run id, so that a resumed run logs into the same W&B run.
TRACKING = "tracking.json"


class Tracker:
    """Writes one JSON line per ``log`` call; no-op when ``enabled`` is False (non-main ranks).

    ``resume_step``: the checkpoint's step of a resumed run. ``metrics.jsonl`` keeps only the
    lines up to it, TensorBoard purges the later events of the earlier process (as
    ``SummaryWriter(purge_step=...)`` does), and W&B resumes the run's own W&B run."""

    def __init__(
        self, run_dir: Path, cfg: Any, enabled: bool = True, resume_step: int | None = None
    ) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self._tb: Any = None
        self._wandb: Any = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            repair_metrics(self.path, resume_step)
        record(run_dir, self.path.name)
        if "tensorboard" in cfg.report_to:
            self._tb = self._new_outputs("tensorboard", lambda: _tensorboard(run_dir, resume_step))
        if "wandb" in cfg.report_to:
            self._wandb = self._new_outputs("wandb", lambda: _wandb(run_dir, cfg))

    def _new_outputs(self, folder: str, start: Any) -> Any:
        """Start a tracker that writes into ``folder``; record the files it created there."""
        make_dir(self.run_dir, folder)
        before = set(os.listdir(self.run_dir / folder))
        try:
            return start()
        finally:
            for name in sorted(set(os.listdir(self.run_dir / folder)) - before):
                record(self.run_dir, f"{folder}/{name}", "tree")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        # Dashboards group the tags as HF's Trainer does (train/..., eval/...); metrics.jsonl
        # keeps TRL's plain names, which the report reads.
        tagged = {k if k.startswith("eval/") else f"train/{k}": v for k, v in metrics.items()}
        if self._tb is not None:
            for k, v in tagged.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(tagged, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _tensorboard(run_dir: Path, resume_step: int | None) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    # purge_step: events at or after it that an earlier process wrote are dropped by readers
    purge = None if resume_step is None else resume_step + 1
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)


def _wandb(run_dir: Path, cfg: Any) -> Any:
    """A W&B run named ``run_name`` (default: the run folder's name) in ``wandb_project`` /
    ``wandb_entity`` (default: $WANDB_PROJECT or 'gpo', $WANDB_ENTITY); the same W&B run id for
    the whole gpo run ($WANDB_RUN_ID, else a new one), kept in ``tracking.json``, so a resumed
    run goes on in it."""
    try:
        import wandb
    except ImportError:
        raise ValueError(
            "report_to includes 'wandb' but wandb is not installed (pip install wandb)"
        ) from None
    ids = run_dir / TRACKING
    saved = json.loads(ids.read_text()) if ids.is_file() else {}
    # $WANDB_RUN_ID (as W&B and HF's Trainer read it) names the W&B run a new gpo run logs
    # into; once saved, the run folder's own id wins, so a resume never switches W&B runs.
    run_id = saved.get("wandb_run_id") or os.environ.get("WANDB_RUN_ID") or uuid.uuid4().hex[:12]
    if not saved:
        write_json(output(run_dir, TRACKING), {"wandb_run_id": run_id})
    return wandb.init(
        project=cfg.wandb_project or os.environ.get("WANDB_PROJECT") or "gpo",
        entity=cfg.wandb_entity or os.environ.get("WANDB_ENTITY") or None,
        name=cfg.run_name or Path(run_dir).resolve().name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=saved_config(cfg),
    )


def _step(line: str) -> int | None:
    """The step of a metrics line, or None for a damaged one (a kill -9 mid-write)."""
    try:
        record = json.loads(line)
        return int(record["step"]) if isinstance(record, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def repair_metrics(path: Path, last_step: int) -> None:
    """Keep the whole lines up to ``last_step`` (a resumed run rewrites what came after its
    checkpoint, so the file has no repeats); a half-written line is dropped. Atomic: the file
    is rewritten to a temporary one and renamed over it."""
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        step = _step(line) if line.strip() else None
        if step is not None and step <= last_step:
            keep.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write("".join(keep))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return read_jsonl(path) if path.exists() else []


def eval_line(step: int, m: dict[str, float]) -> str:
    """One line per evaluation; a Monte Carlo KL near 0 can come out negative, hence its SE.
    (No pair metrics with prompt-only held-out rows.)"""
    parts = []
    if "eval/loss" in m:
        parts.append(f"loss {m['eval/loss']:.4f}")
        parts.append(f"acc {m['eval/rewards/accuracies']:.2f}")
    if "eval/kl" in m:
        parts.append(f"KL {m['eval/kl']:.3g} +- {m['eval/kl_se']:.2g} nats")
    if "eval/win_rate" in m:
        parts.append(f"win rate {m['eval/win_rate']:.3f} +- {m['eval/win_rate_se']:.3f}")
    return f"eval at step {step}: " + (", ".join(parts) or "nothing measured")
