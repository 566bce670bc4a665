"""`gpo train`: preference optimization of a causal LM with any objective, on the data's pairs
or on pairs sampled from the policy as it trains (``--online``: :mod:`gpo.train.online`).

Built on Accelerate (a plain loop rather than the HF ``Trainer``: the step is a few lines, and
owning the loop keeps the data order, checkpoints and logging exact and inspectable). The
objective is an object from :func:`gpo.losses.objectives.resolve_objective`; the loop never
looks at its name. Set-up (model, data, optimizer, data order) is :mod:`gpo.train.setup`,
the run folder :mod:`gpo.train.run_folder`.

Data order: every micro-step takes the next ``batch_size * num_processes`` pairs of a seeded
permutation (a new one each epoch) and process ``r`` uses slice ``r``; so one process with batch
``2b`` and two with ``b`` see the same global batches, and a resumed run continues exactly where
its checkpoint stopped.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gpo.data.collate import collate_for_training
from gpo.eval.judges import resolve_judge
from gpo.eval.pairs import concat_values, pair_values, reduce_metrics
from gpo.io import write_json
from gpo.losses.objectives import resolve_objective
from gpo.models.logps import PolicyLogps, SequenceLogps
from gpo.train.checkpoint import latest_usable_checkpoint, save_checkpoint, save_final
from gpo.train.config import TrainConfig, saved_config
from gpo.train.denormals import denormals_flushed
from gpo.train.evaluation import Evaluations
from gpo.train.guards import NonFiniteGuard, TrainingError
from gpo.train.host_memory import reuse_freed_memory
from gpo.train.interrupt import Interrupted, StopRequests
from gpo.train.kl_steering import ROLLBACK, KLSteering
from gpo.train.labels import label_strategy
from gpo.train.length_groups import length_groups, merge_groups
from gpo.train.online import pair_source, resolve_online_judge
from gpo.train.plots import plot_run
from gpo.train.resume import (
    PROCESSES,
    check_data,
    check_processes,
    data_fingerprint,
    finished_summary,
)
from gpo.train.run_folder import check_free_space, checkpoint_bytes, open_run_dir, start_writing
from gpo.train.run_record import delete_recorded, output
from gpo.train.schedule import segments_for
from gpo.train.setup import (
    accelerator,
    attach_ref_cache,
    build_model,
    gather_uneven,
    is_gold,
    make_optimizer,
    micro_batches,
    precision_warning,
    prepare,
    resolve_steps,
)
from gpo.train.startup import announce
from gpo.train.tracking import Tracker, eval_line

NO_CHECKPOINT = "no usable checkpoint: starting"
#: Called after every optimizer step with ``(step, seconds since the loop started)``.
StepCallback = Callable[[int, float], None]


class Trainer(Evaluations):
    """One training run: set up in ``__init__``, carried out by :meth:`run`."""

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[StepCallback] = ()) -> None:
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.stops = StopRequests()
        self._grad_norms: list[torch.Tensor] = []  # pre-clipping norms since the last log
        self._tokens = 0  # prompt + both responses of the pairs since the last log (all ranks)
        self.objective = resolve_objective(cfg.loss)  # fail fast, before any model is loaded
        self.labels = label_strategy(cfg.online_labels, self.objective, cfg.beta)  # hard, soft
        if cfg.reuse_host_memory:  # before the model loads (page faults: 6-15% of a CPU step)
            reuse_freed_memory()
        self.acc = acc = accelerator(cfg)
        self.main = acc.is_main_process
        self.run_dir, created = self._run_dir()
        self._writing = False  # set once this run starts writing into its folder
        try:  # a failed start leaves nothing behind: no half-made run, no config.json
            self._setup(set_seed, get_scheduler)
        except BaseException:
            if self.main and self._writing and not cfg.resume:
                delete_recorded(self.run_dir)
            if self.main and created and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()
            raise

    def _setup(self, set_seed: Callable[[int], None], get_scheduler: Callable[..., Any]) -> None:
        cfg, acc = self.cfg, self.acc
        set_seed(cfg.seed)
        model, self.tokenizer, self.reference = build_model(cfg)
        if self.main and (warning := precision_warning(cfg)):
            print(warning, file=sys.stderr)
        self.data = prepare(cfg, self.tokenizer)
        resolve_steps(cfg, len(self.data.train), acc.num_processes)
        if self.main:
            announce(cfg, self.run_dir, self.data, model.config)
        self.steering = None
        if cfg.kl_target is not None:
            if not self.data.eval:
                raise ValueError("kl_target needs held-out prompts: the data gave no eval pairs")
            self.steering = KLSteering(cfg, len(self.data.eval))
        self.params = [p for p in model.parameters() if p.requires_grad]
        if self.main:  # a too-full disk fails now, not at the first checkpoint
            ckpt = checkpoint_bytes(model, self.params, cfg.finetune == "lora")
            check_free_space(self.run_dir, ckpt, cfg)
        optimizer = make_optimizer(cfg, self.params)
        self.scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=int(cfg.warmup_ratio * cfg.max_steps),
            num_training_steps=cfg.max_steps,
        )
        self.policy, self.optimizer = acc.prepare(PolicyLogps(model, cfg.logp_reduction), optimizer)
        self.model = acc.unwrap_model(self.policy).model  # what is saved and sampled from
        self.reference.to(acc.device)
        attach_ref_cache(cfg, self.reference)
        # fp16's GradScaler already skips steps with inf gradients, so only losses are checked.
        self.guard = NonFiniteGuard(cfg.on_nonfinite, acc.device, acc.scaler is None)

        judge = None
        if self.main and cfg.judge_prompts > 0 and self.data.eval:
            judge = resolve_judge(cfg.judge)
            if hasattr(judge, "progress"):  # model judges take a while: show a bar
                judge.progress = cfg.progress
        online_judge = resolve_online_judge(cfg) if cfg.online else None  # every process's own
        fingerprint = data_fingerprint(self.data.train, self.data.eval)
        self.start_step = self._resume(fingerprint) if cfg.resume else 0
        if self.main:  # every check passed: the run folder is this run's
            self._writing = True
            start_writing(cfg, self.run_dir, fingerprint)
        resumed_at = self.start_step if cfg.resume else None
        self.tracker = Tracker(self.run_dir, cfg, self.main, resumed_at)
        self.source = pair_source(self, online_judge)  # the data's pairs, or the policy's
        world, rank = acc.num_processes, acc.process_index
        self.eval_shard = self.data.eval[: cfg.eval_max_pairs][rank::world]
        # No held-out pairs (eval_fraction 0): no evaluation at all.
        self.eval_segments = (
            segments_for(cfg.eval_schedule, cfg.eval_steps) if self.data.eval else []
        )
        self.win_rate = None
        if judge is not None:
            self.win_rate = self._win_rate_eval(judge, cfg.judge_prompts, cfg.opponent)

    def _run_dir(self) -> tuple[Path, bool]:
        """The run folder (:func:`gpo.train.run_folder.open_run_dir`), shared with every process."""
        run_dir, created = open_run_dir(self.cfg, self.main)
        shared = self.acc.gather_for_metrics([str(run_dir)], use_gather_object=True)[0]
        return Path(shared), created

    def _resume(self, fingerprint: str) -> int:
        """The step to continue from (:mod:`gpo.train.resume` refuses what it cannot continue)."""
        check_data(self.run_dir, fingerprint)
        check_processes(self.run_dir, self.acc.num_processes)
        state = latest_usable_checkpoint(
            self.run_dir, self.model, self.optimizer, self.scheduler, self.acc.scaler
        )
        if self.main:
            print(f"resuming at step {state['step']}" if state else NO_CHECKPOINT)
        if state and self.steering is not None:
            self.steering.load_state_dict(state["kl_control"])
        return state["step"] if state else 0

    @property
    def beta(self) -> float:
        """The loss's beta for the next step: fixed, or steered towards ``kl_target``."""
        return self.cfg.beta if self.steering is None else self.steering.beta

    def _gather(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: gather_uneven(self.acc, t) for k, t in values.items()}

    def _micro_step(self, step: int, micro: int, indices: list[int]) -> dict[str, torch.Tensor]:
        """Forward and backward of this process's share of one global batch."""
        cfg, b, rank = self.cfg, self.cfg.batch_size, self.acc.process_index
        pairs = self.source.pairs(step, micro, indices[rank * b : (rank + 1) * b])
        pad, device = self.tokenizer.pad_token_id, self.acc.device
        # Length groups (gpo.train.length_groups): each padded only to its own longest pair,
        # all in one forward call, results back in pair order: the padded batch's loss and
        # gradient without its padding. One group, in order, when the batch is within max_padding.
        shared = cfg.share_prompt and all(p.prompt_ids for p in pairs)
        groups = length_groups(pairs, shared, cfg.max_padding)
        batches = [
            collate_for_training([pairs[i] for i in g], pad, cfg.share_prompt).to(device)
            for g in groups
        ]
        rows = torch.tensor([p.index for p in pairs], dtype=torch.long)
        with self.acc.accumulate(self.policy):
            parts = self.policy(batches)
            policy = merge_groups([SequenceLogps(*o) for o in parts], groups)
            # pi_ref under the policy's autocast (as TRL does), so that with bf16 both sides of
            # rho round alike (bench/bf16_drift.py); without mixed precision a no-op.
            with self.acc.autocast():
                refs = [self.reference.logps(b, cfg.logp_reduction) for b in batches]
            ref = merge_groups(refs, groups)
            loss, out = self.labels.loss(self.objective, pairs, policy, ref, self.beta)
            self.guard.watch_loss(loss, micro, rows)  # checked once per step, below
            self.acc.backward(loss)
            if self.acc.sync_gradients:  # the step's last micro-step: update, then clear
                self._update(step)
        return self._gather(pair_values(out, policy, ref, self.beta, cfg.logp_reduction))

    def _update(self, step: int) -> None:
        """Clip, check (:class:`NonFiniteGuard`: stop, or skip the update) and step, once the
        gradients of all of the step's micro-steps are accumulated."""
        norm = None
        if self.cfg.max_grad_norm > 0:
            norm = self.acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            self._grad_norms.append(torch.as_tensor(norm).detach().float())
        if self.guard.step_ok(step, self.params, norm):
            self.optimizer.step()
        self.optimizer.zero_grad()

    def save(self, step: int) -> None:
        if self.reference.cache is not None:
            self.reference.cache.flush()
        if self.main:
            state: dict[str, Any] = {
                "config": saved_config(self.cfg),
                PROCESSES: self.acc.num_processes,
            }
            if self.steering is not None:
                state["kl_control"] = self.steering.state_dict()
            save_checkpoint(
                self.run_dir,
                step,
                self.model,
                self.optimizer,
                self.scheduler,
                state,
                self.cfg.save_total_limit,
                self.tokenizer,
                self.acc.scaler,
            )
        self.acc.wait_for_everyone()

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        world = self.acc.num_processes
        accum = cfg.gradient_accumulation_steps
        batches = micro_batches(
            len(self.data.train),
            cfg.batch_size * world,
            cfg.seed,
            self.start_step * accum,
            cfg.shuffle,
        )
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.start_step,
            desc="train",
            disable=not (self.main and cfg.progress),
        )
        t0 = time.perf_counter()
        self.policy.train()
        with self.stops.installed(), denormals_flushed(cfg.flush_denormals):
            last, last_eval = self._loop(batches, bar, t0)
        bar.close()
        if self.reference.cache is not None:  # here, not in finish(): subclasses replace that
            self.reference.cache.flush()
        summary: dict[str, Any] = {
            "train": last,
            "eval": last_eval,
            "steps": cfg.max_steps,
            "train_seconds": time.perf_counter() - t0,
            "run_dir": str(self.run_dir),
            **self.source.summary(),
        }
        if self.steering is not None:
            summary.update(self.steering.summary(last_eval))
            if self.main and (warning := self.steering.miss_warning(summary)):
                print(warning, file=sys.stderr)
        return self.finish(summary)

    def _steer(self, step: int, values: list[dict[str, torch.Tensor]]) -> None:
        """KL-targeted training: beta and LR scale for the next step (``kl_steering``)."""
        steering = self.steering
        if steering is None:
            return
        rho = torch.cat([v["rho"] for v in values]).double()
        measure = self._measure_kl if self.main else None
        # An evaluation right after this step measures the KL anyway: the controller takes that
        # measurement (larger than its own) instead of sampling again. Not at the last step,
        # whose evaluation is the run's reported KL: a rollback decided on those same draws
        # would select on them.
        evaluated = None
        if measure is not None and self._evaluates_kl(step) and step < self.cfg.max_steps:
            evaluated = partial(self._eval_kl, step)
        logged = steering.after_step(step, (rho.pow(2).mean() / 2).item(), measure, evaluated)
        if steering.action == ROLLBACK:  # the weights measured are gone
            self._eval_kl_cache = None
        steering.apply(self.acc, self.params, self.optimizer, self.scheduler)
        self.tracker.log(step, logged)

    def _check_stop(self, step: int) -> None:
        """On SIGINT/SIGTERM: checkpoint this step and stop (:mod:`gpo.train.interrupt`)."""
        if self.stops.requested(self.acc.device):
            self.save(step)
            self.tracker.close()
            raise Interrupted(step, self.stops.signum or signal.SIGTERM, self.run_dir)

    def _loop(self, batches: Any, bar: Any, t0: float) -> tuple[dict[str, float], dict[str, float]]:
        cfg, world, accum = self.cfg, self.acc.num_processes, self.cfg.gradient_accumulation_steps
        window: list[dict[str, torch.Tensor]] = []
        last: dict[str, float] = {}
        last_eval: dict[str, float] = {}
        for step in range(self.start_step + 1, cfg.max_steps + 1):
            for _ in range(accum):
                micro, indices = next(batches)
                window.append(self._micro_step(step, micro, indices))
                self._tokens += self.source.tokens(indices)
            self.scheduler.step()
            bar.update(1)
            if per_step := self.source.end_step(step, window[-accum:]):
                self.tracker.log(step, per_step)
            self._steer(step, window[-accum:])
            for callback in self.callbacks:
                callback(step, time.perf_counter() - t0)
            if step % cfg.logging_steps == 0 or step == cfg.max_steps:
                last = reduce_metrics(concat_values(window))
                epoch = (micro + 1) * cfg.batch_size * world / len(self.data.train)
                last.update(learning_rate=self.optimizer.param_groups[0]["lr"], epoch=epoch)
                last["tokens"], self._tokens = self._tokens, 0
                if self._grad_norms:  # pre-clipping, averaged over the logged steps
                    last["grad_norm"] = torch.stack(self._grad_norms).mean().item()
                    self._grad_norms = []
                if self.guard.skipped:  # on_nonfinite=skip: how many updates were dropped
                    last["nonfinite_skipped_steps"] = self.guard.skipped
                self.tracker.log(step, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['rewards/accuracies']:.2f}")
                window = []
            self._check_stop(step)
            if self._evaluates(step):
                last_eval = self.evaluate(step)
                self.tracker.log(step, last_eval)
                if self.main:
                    bar.write(eval_line(step, last_eval))
                self._check_stop(step)
            if cfg.save_steps > 0 and step % cfg.save_steps == 0 and step < cfg.max_steps:
                self.save(step)
        return last, last_eval

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Gold win rate (gold data), final model, summary and plots; main process only."""
        cfg = self.cfg
        if self.main and is_gold(cfg) and cfg.gold_eval_prompts > 0:
            summary.update(self.final_gold_win_rate())
        cache = self.reference.cache
        if cache is not None and self.main:
            print(
                f"reference log-probs: {cache.hits} pairs from the cache, {cache.misses} "
                f"computed ({cache.folder})"
            )
        if self.main and cfg.save_final:
            save_final(self.run_dir, self.model, self.tokenizer)
        if self.main:
            write_json(output(self.run_dir, "summary.json"), summary)
            self.tracker.close()
            plot_run(self.run_dir)
        self.acc.wait_for_everyone()
        # Release the DDP wrapper (its reducer holds the process group) while every rank is
        # alive: destroyed later, after a peer has exited, gloo can hang in its destructor.
        self.policy = None
        self.acc.free_memory()
        self.acc.wait_for_everyone()
        self.acc.end_training()
        return summary


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training as configured; returns the summary also written to ``summary.json``.

    Resuming a run that already finished its ``max_steps`` does nothing and returns its summary.
    """
    summary = finished_summary(cfg)
    if summary is not None:
        print(f"gpo: {cfg.out} already finished {summary['steps']} steps: nothing to resume")
        return summary
    return Trainer(cfg).run()


__all__ = ["Trainer", "TrainingError", "train"]
