"""A sweep's config and its runs: the ``base``, ``grid``, ``runs`` and ``sft`` of
:mod:`gpo.experiments.sweep`, validated, and :func:`plan`, every run with its TrainConfig."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpo.experiments.sft import SftConfig
from gpo.io import read_yaml_mapping
from gpo.train.config import TrainConfig, suggest_field

RUNS_DIR = "runs"
SFT_DIR = "pi_sft"
EXECUTORS = ("local", "ray", "slurm")


@dataclass
class SweepConfig:
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    sft: SftConfig | None = None
    jobs: int | None = None  # local: runs at once (default 1); ignored by ray and slurm
    executor: str = "local"  # local | ray | slurm
    cpus_per_run: int = 1  # ray, slurm: CPU cores of each run (its OMP_NUM_THREADS)
    #: ray, slurm: pre-build pi_ref's log-probs and opponents before the fan-out. Default: when
    #: the runs can land on several machines (Slurm; a Ray cluster of more than one node).
    prebuild: bool | None = None
    gpus_per_run: float = 0  # ray, slurm: GPUs of each run (ray allows a fraction)
    slurm_partition: str | None = None  # slurm: the partition (default: the cluster's)
    slurm_time: int = 240  # slurm: minutes per job; a longer run is requeued from its checkpoint
    slurm_array_parallelism: int = 64  # slurm: array tasks running at once
    slurm_mem_gb: float | None = None  # slurm: memory per job (default: the cluster's)
    slurm_extra: dict[str, Any] = field(default_factory=dict)  # more sbatch options (account...)
    slurm_cluster: str = "slurm"  # 'local': submitit's local executor (tests, a dry run here)

    def __post_init__(self) -> None:
        if isinstance(self.sft, dict):
            unknown = set(self.sft) - {f.name for f in dataclasses.fields(SftConfig)}
            if unknown:
                raise ValueError(f"sweep config: unknown sft keys {sorted(unknown)}")
            self.sft = SftConfig(**self.sft)
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        for part, keys in (("base", self.base), ("grid", self.grid)):
            for key in keys:
                if key not in names:
                    raise ValueError(
                        f"sweep config: unknown {part} key {key!r}{suggest_field(key)}"
                    )
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"sweep config: grid.{key} must be a non-empty list")
        for i, run in enumerate(self.runs):
            if not isinstance(run, dict) or not isinstance(run.get("name"), str):
                raise ValueError(f"sweep config: runs[{i}] must be a mapping with a 'name'")
            for key in set(run) - {"name"}:
                if key not in names or key in self.grid or key in ("out", "resume"):
                    raise ValueError(
                        f"sweep config: runs[{i}] ({run['name']}): key {key!r} is unknown, a "
                        f"grid key or set by the sweep{suggest_field(key)}"
                    )
        for key in ("out", "resume"):
            if key in self.base or key in self.grid:
                raise ValueError(f"sweep config: {key!r} is set by the sweep, not the config")
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"sweep config: jobs must be >= 1, got {self.jobs}")
        _check_executor(self)


def _check_executor(cfg: SweepConfig) -> None:
    if cfg.executor not in EXECUTORS:
        raise ValueError(f"sweep config: executor must be one of {', '.join(EXECUTORS)}")
    if cfg.prebuild not in (None, True, False):
        raise ValueError(f"sweep config: prebuild must be true or false, got {cfg.prebuild!r}")
    if cfg.slurm_cluster not in ("slurm", "local"):
        raise ValueError("sweep config: slurm_cluster must be 'slurm' or 'local'")
    checks = {
        "cpus_per_run": cfg.cpus_per_run >= 1,
        "gpus_per_run": cfg.gpus_per_run >= 0,
        "slurm_time": cfg.slurm_time >= 1,
        "slurm_array_parallelism": cfg.slurm_array_parallelism >= 1,
    }
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"sweep config: {key} out of range: {getattr(cfg, key)}")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; the ``base``, ``grid`` and ``sft`` mappings merge key-wise."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def load_sweep_config(path: str | Path | None, preset: str | None) -> SweepConfig:
    """A preset (if named), then the YAML file on top of it; unknown keys are errors."""
    from gpo.experiments.presets import preset_dict

    values: dict[str, Any] = preset_dict(preset) if preset else {}
    if path is not None:
        known = {f.name for f in dataclasses.fields(SweepConfig)}
        loaded = read_yaml_mapping(path, "sweep config", known, lambda _: f" (use {sorted(known)})")
        values = merge(values, loaded)
    if not values:
        raise ValueError("gpo sweep needs --config YAML or --preset NAME")
    return SweepConfig(**values)


@dataclass
class Run:
    name: str
    dir: Path
    config: TrainConfig
    point: dict[str, Any]  # this run's grid values

    @property
    def done(self) -> bool:
        return (self.dir / "summary.json").is_file()

    @property
    def started(self) -> bool:
        return (self.dir / "config.json").is_file()


def _fmt(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return "".join(c if c.isalnum() or c in ".-+" else "_" for c in text)


def plan(cfg: SweepConfig, sweep_dir: Path) -> list[Run]:
    """Every run of the grid, with its validated TrainConfig (fails before anything runs)."""
    base = dict(cfg.base)
    if cfg.sft is not None:
        base["model"] = str(sweep_dir / SFT_DIR)
    keys = list(cfg.grid)
    runs = []
    for values in itertools.product(*(cfg.grid[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        grid_name = "_".join(f"{k}={_fmt(v)}" for k, v in point.items())
        for extra in cfg.runs or [{}]:
            settings = {k: v for k, v in extra.items() if k != "name"}
            label = _fmt(extra["name"]) if "name" in extra else ""
            name = "_".join(p for p in (label, grid_name) if p) or "run"
            run_dir = sweep_dir / RUNS_DIR / name
            try:
                tc = TrainConfig(**{**base, **settings, **point, "out": str(run_dir)})
            except (TypeError, ValueError) as e:
                raise ValueError(f"sweep run {name}: {e}") from None
            runs.append(Run(name, run_dir, tc, {**settings, **point}))
    if len({r.name for r in runs}) != len(runs):
        raise ValueError("sweep: two grid points give the same run name; make the values distinct")
    return runs
