"""Before a cluster sweep fans out: pi_ref's log-probs and its win-rate opponents, built once.

Runs that share a reference model and data would each compute pi_ref's log-probs of the same
pairs and sample the same opponent completions (once per node on a cluster whose nodes start
together). One task per group of such runs fills the shared cache first
(:mod:`gpo.models.ref_cache`, ``$GPO_CACHE_DIR``): the training pairs of the first epoch in
the batches the group's first seed draws (so its runs read back exactly the values they would
compute), the held-out pairs as each evaluation batches them, and the opponents of every seed.

It runs as ``python -m gpo.experiments.executors.prebuild SPEC.json``: a trainer for the
group's first run, set up but not trained, in a scratch folder that is removed afterwards. A
failed pre-build costs only speed: the runs then compute what they miss.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from itertools import islice
from pathlib import Path
from typing import Any

from gpo.data.builtin import builtin_task
from gpo.experiments.executors.common import LOCKS_DIR, SWEEP_JSON, Task, threads_env
from gpo.train.config import TrainConfig, saved_config

PREBUILD_DIR = "prebuild"

#: Options that change neither pi_ref, nor the data and its batches, nor the opponents: runs
#: that differ only in these share one pre-build. (An option missing here costs only a
#: redundant pre-build, whose batches are then all found in the cache.)
POLICY_ONLY = {
    "loss", "beta", "learning_rate", "weight_decay", "warmup_ratio", "lr_scheduler",
    "max_grad_norm", "optim", "on_nonfinite", "seed", "out", "resume", "overwrite",
    "max_steps", "num_epochs", "logging_steps", "eval_steps", "eval_schedule", "save_steps",
    "save_total_limit", "save_final", "report_to", "run_name", "wandb_project",
    "wandb_entity", "progress", "judge", "gold_eval_prompts", "kl_prompts", "kl_samples",
    "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "reuse_host_memory",
    "flush_denormals", "logp_reduction", "gradient_checkpointing",
}  # fmt: skip


def _group_key(tc: TrainConfig) -> str:
    values = {k: v for k, v in dataclasses.asdict(tc).items() if k not in POLICY_ONLY}
    values = {k: v for k, v in values.items() if not k.startswith("kl_")}
    return json.dumps(values, sort_keys=True, default=str)


def prebuild_tasks(configs: list[TrainConfig], sweep_dir: Path, cpus: int) -> list[Task]:
    """One task per group of runs that share pi_ref, the data and the opponents; none for runs
    without the cache (``ref_cache none``). Its spec is the group's first run with the longest
    ``max_steps``, trained nowhere: the judge is replaced by the data's gold judge (``gold``,
    ``vader`` for the sentiment task; it is never asked; an ``http`` judge's credentials then
    never reach a file)."""
    groups: dict[str, list[TrainConfig]] = {}
    for tc in configs:
        if tc.ref_cache != "none":
            groups.setdefault(_group_key(tc), []).append(tc)
    tasks = []
    folder = sweep_dir / PREBUILD_DIR
    for key, members in groups.items():
        # Named by what it builds: a restarted sweep skips what it built before.
        name = "group-" + hashlib.blake2b(key.encode(), digest_size=5).hexdigest()
        if (folder / f"{name}.done").is_file():
            continue
        task = builtin_task(members[0].data)
        first = dataclasses.replace(
            members[0],
            max_steps=max(m.max_steps for m in members),
            out=str(folder / name),
            judge=task.judge if task is not None else "gold",
            report_to=["none"],
            progress=False,
            save_steps=0,
            save_final=False,
            resume=False,
            overwrite=False,
        )
        spec = {"config": saved_config(first), "seeds": sorted({m.seed for m in members})}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(spec, indent=2) + "\n")
        tasks.append(
            Task(
                name=f"prebuild {name}",
                log=folder / f"{name}.log",
                lock=sweep_dir / LOCKS_DIR / f"prebuild-{name}.lock",
                args=["-m", "gpo.experiments.executors.prebuild", str(folder / f"{name}.json")],
                env=threads_env(cpus),  # the runs' threads: bit-equal log-probs
                shared=sweep_dir / SWEEP_JSON,
            )
        )
    return tasks


def fill(cfg: TrainConfig, seeds: list[int]) -> dict[str, Any]:
    """Set up a trainer for ``cfg`` and compute what its runs would read from the cache."""
    from gpo.data.collate import collate_for_training
    from gpo.train.length_groups import length_groups
    from gpo.train.setup import micro_batches
    from gpo.train.trainer import Trainer

    trainer = Trainer(cfg)  # samples the first seed's opponents (judge_prompts > 0)
    ref, acc, data, pad = (
        trainer.reference,
        trainer.acc,
        trainer.data,
        trainer.tokenizer.pad_token_id,
    )
    if ref.cache is None:
        return {"pairs": 0}
    b, world = cfg.batch_size, acc.num_processes
    per_epoch = len(data.train) // (b * world)
    steps = min(per_epoch, cfg.max_steps * cfg.gradient_accumulation_steps)
    # As Trainer._micro_step batches them: the first epoch's draws, in length groups.
    for _, indices in islice(
        micro_batches(len(data.train), b * world, cfg.seed, 0, cfg.shuffle), steps
    ):
        pairs = [data.train[i] for i in indices[:b]]
        shared = cfg.share_prompt and all(p.prompt_ids for p in pairs)
        for group in length_groups(pairs, shared, cfg.max_padding):
            batch = collate_for_training([pairs[i] for i in group], pad, cfg.share_prompt)
            with acc.autocast():
                ref.logps(batch.to(acc.device), cfg.logp_reduction)
    # As gpo.eval.pairs.pair_metrics batches the held-out pairs at every evaluation.
    held_out = list(trainer.eval_shard)
    for k in range(0, len(held_out), b):
        batch = collate_for_training(held_out[k : k + b], pad, cfg.share_prompt)
        ref.logps(batch.to(acc.device), cfg.logp_reduction)
    ref.cache.flush()
    if trainer.win_rate is not None:
        for seed in seeds[1:]:  # the first seed's were sampled when the trainer was set up
            trainer.cfg.seed = seed
            trainer._win_rate_eval(trainer.win_rate.judge, cfg.judge_prompts, cfg.opponent)
    return {"pairs": len(ref.cache), "steps": steps, "held_out": len(held_out)}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    cfg = TrainConfig(**spec["config"])
    shutil.rmtree(cfg.out, ignore_errors=True)  # scratch: a fresh trainer folder every time
    try:
        done = fill(cfg, spec["seeds"])
    finally:
        shutil.rmtree(cfg.out, ignore_errors=True)
    print(f"prebuild: {json.dumps(done)}", flush=True)
    Path(argv[0]).with_suffix(".done").write_text(json.dumps(done) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
