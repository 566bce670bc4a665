"""Metric sinks for a run: ``metrics.jsonl`` always, TensorBoard and W&B when asked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gpo.io import read_jsonl


class Tracker:
    """Writes one JSON line per ``log`` call; no-op when ``enabled`` is False (non-main ranks)."""

    def __init__(
        self,
        run_dir: Path,
        report_to: list[str],
        config: dict[str, Any],
        enabled: bool = True,
        truncate_after: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._tb: Any = None
        self._wandb: Any = None
        if not enabled:
            return
        if truncate_after is not None and self.path.exists():
            repair_metrics(self.path, truncate_after)
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError:
                raise ValueError(
                    "report_to includes 'wandb' but wandb is not installed (pip install wandb)"
                ) from None
            self._wandb = wandb.init(project="gpo", dir=str(run_dir), config=config)

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
    """One line per evaluation; a Monte Carlo KL near 0 can come out negative, hence its SE."""
    parts = [f"eval at step {step}: loss {m['eval/loss']:.4f}"]
    parts.append(f"acc {m['eval/rewards/accuracies']:.2f}")
    if "eval/kl" in m:
        parts.append(f"KL {m['eval/kl']:.3g} +- {m['eval/kl_se']:.2g} nats")
    if "eval/win_rate" in m:
        parts.append(f"win rate {m['eval/win_rate']:.3f} +- {m['eval/win_rate_se']:.3f}")
    return ", ".join(parts)
