"""How far gpo's bf16 training drifts from fp32: the same run twice, compared step by step.

    .venv/bin/python bench/bf16_drift.py                       # SmolLM2, 30 steps (slow on CPU)
    .venv/bin/python bench/bf16_drift.py --model tiny --steps 5 --json   # harness check

Both runs train the same model on the same data in the same order (``vs_trl.py``'s workload
for ``--shape``, default ``short_prompt``: 200-token responses, the longest log-prob sums of the
fixed shapes), full fine-tuning with a frozen reference (``--lora``: LoRA, pi_ref = adapters
off), fused AdamW, constant lr, batch as
``vs_trl.py``, no reference cache: one with ``mixed_precision=no`` (fp32), one with
``mixed_precision=bf16`` (autocast). Reported per step (each logged before its update):

- the loss of both runs and ``|bf16 - fp32|``; ``loss_max_abs_dev`` is the largest over the run;
- the summed log-prob margin ``rho = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log
  pi_ref(y_l))``, batch mean (gpo's ``rho/mean``), and at the final step its relative deviation
  ``|rho_bf16 - rho_fp32| / |rho_fp32|`` (``margin_rel_dev_final``; issue 17's target: <= 1%).
  At step 1 the policy is the reference, so rho is 0 there and only later steps give a ratio;
  a batch mean near 0 makes that ratio large, so the final step's per-pair deviation
  ``sum_i |rho_i,bf16 - rho_i,fp32| / sum_i |rho_i,fp32|`` (``pair_margin_rel_dev_final``) is
  reported too.

Two trajectories that differ by any rounding drift apart, the faster the larger the learning
rate (``--lr``, default 1e-4). To separate one step's rounding from that divergence, the fp32 run
also scores every batch, before its update, under bf16 autocast with the same weights
(``same_weights_*``: per step, ``sum_i |rho_i,bf16 - rho_i,fp32| / sum_i |rho_i,fp32|`` and the
loss gap on identical weights; their maxima over the steps after the first).

``--head bf16`` and ``--reference fp32`` turn off two of gpo's choices, to measure them: the LM
head's matmul in float32 under autocast (``gpo.models.logps.HEAD_FP32_UNDER_AUTOCAST``; its
log-softmax and the sequence sums are float32 either way) and pi_ref under the same autocast as
the policy (``gpo.train.trainer``). Each run is a fresh process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vs_trl_children  # the children's environment, the benchmarked-run options
import vs_trl_workload  # the workload

MODEL_CHOICES = ("tiny", "smollm2")


@dataclasses.dataclass
class RunSpec:
    model_dir: str
    data: str
    n_rows: int
    batch_size: int
    steps: int
    precision: str  # "fp32" or "bf16"
    head: str  # "fp32" or "bf16": the LM head's matmul under autocast
    reference: str  # "autocast" or "fp32": pi_ref's forward under bf16 runs
    lr: float
    lora: bool
    out: str
    result: str


def run_child(spec: RunSpec) -> None:
    """One training run; writes its per-step losses and rho means to ``spec.result``."""
    import torch

    import gpo.models.logps
    from gpo.train.config import TrainConfig
    from gpo.train.tracking import read_metrics
    from gpo.train.trainer import Trainer

    gpo.models.logps.HEAD_FP32_UNDER_AUTOCAST = spec.head == "fp32"
    if spec.reference == "fp32":
        from gpo.models.reference import Reference

        compute = Reference._compute

        def fp32_reference(self: Any, batch: Any, reduction: Any) -> Any:
            with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
                return compute(self, batch, reduction)

        Reference._compute = fp32_reference  # type: ignore[method-assign]
    cfg = TrainConfig(
        model=spec.model_dir,
        data=spec.data,
        eval_data=spec.data,
        eval_split=None,
        loss="logistic",
        beta=vs_trl_children.BETA,
        finetune="lora" if spec.lora else "full",
        max_length=vs_trl_children.max_positions(spec.model_dir),
        max_steps=spec.steps,
        batch_size=spec.batch_size,
        learning_rate=spec.lr,
        weight_decay=0.0,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        seed=vs_trl_workload.SEED,
        out=spec.out,
        **vs_trl_children.train_only(),
        ref_cache="none",
        mixed_precision="bf16" if spec.precision == "bf16" else "no",
    )

    class Recording(Trainer):
        """Keeps every micro-step's per-pair rho (pair order as in the batch); the fp32 run also
        scores each batch under bf16 autocast first, with the same weights."""

        pair_rho: list[list[float]]
        same_weights: list[dict[str, Any]]

        def _micro_step(self, step: int, micro: int, indices: list[int]) -> Any:
            if spec.precision == "fp32":
                self.same_weights.append(self._score_in_bf16(indices))
            out = super()._micro_step(step, micro, indices)
            self.pair_rho.append(out["rho"].tolist())
            return out

        @torch.no_grad()
        def _score_in_bf16(self, indices: list[int]) -> dict[str, Any]:
            from gpo.data.collate import collate_for_training
            from gpo.models.logps import SequenceLogps

            pairs = [self.data.train[i] for i in indices[: self.cfg.batch_size]]
            batch = collate_for_training(pairs, self.tokenizer.pad_token_id, self.cfg.share_prompt)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                policy = SequenceLogps(*self.policy(batch))
                ref = self.reference.logps(batch, self.cfg.logp_reduction)
                out = self.objective(*policy.split(), *ref.split(), self.beta, validate=False)
            return {"rho": out.rho.float().tolist(), "loss": out.losses.float().mean().item()}

    trainer = Recording(cfg)
    trainer.pair_rho, trainer.same_weights = [], []
    if len(trainer.data.train) != spec.n_rows:
        raise RuntimeError(f"gpo kept {len(trainer.data.train)} of {spec.n_rows} rows")
    trainer.run()
    rows = [r for r in read_metrics(trainer.run_dir) if "loss" in r]
    result = {
        "losses": [r["loss"] for r in rows],
        "rho": [r["rho/mean"] for r in rows],
        "pair_rho": trainer.pair_rho,
        "same_weights": trainer.same_weights,
    }
    Path(spec.result).write_text(json.dumps(result))


def run(spec: RunSpec, log: Path) -> dict[str, Any]:
    spec_path = Path(spec.out + ".spec.json")
    return vs_trl_children.run_script_child(__file__, spec, spec_path, log, f"{spec.precision} run")


def compare(fp32: dict[str, Any], bf16: dict[str, Any]) -> dict[str, Any]:
    """Per-step deviations and the summary numbers (see the module docstring)."""
    loss_dev = [abs(b - a) for a, b in zip(fp32["losses"], bf16["losses"], strict=True)]
    rho_f, rho_b = fp32["rho"][-1], bf16["rho"][-1]
    pair_f, pair_b = fp32["pair_rho"][-1], bf16["pair_rho"][-1]
    l1 = sum(abs(b - a) for a, b in zip(pair_f, pair_b, strict=True))
    scale = sum(abs(a) for a in pair_f)
    same_rho, same_loss = [], []  # bf16 scoring of the fp32 run's own weights, step by step
    for seen, ref_rho, ref_loss in zip(
        fp32["same_weights"], fp32["pair_rho"], fp32["losses"], strict=True
    ):
        gap = sum(abs(b - a) for a, b in zip(ref_rho, seen["rho"], strict=True))
        size = sum(abs(a) for a in ref_rho)
        same_rho.append(gap / size if size else float("nan"))
        same_loss.append(abs(seen["loss"] - ref_loss))
    later = same_rho[1:]  # step 1: rho is 0 (policy = reference)
    return {
        "same_weights_pair_margin_rel_dev": same_rho,
        "same_weights_pair_margin_rel_dev_max": max(later) if later else float("nan"),
        "same_weights_loss_abs_dev": same_loss,
        "same_weights_loss_max_abs_dev": max(same_loss),
        "steps": len(loss_dev),
        "loss_fp32": fp32["losses"],
        "loss_bf16": bf16["losses"],
        "loss_abs_dev": loss_dev,
        "loss_max_abs_dev": max(loss_dev),
        "loss_final_abs_dev": loss_dev[-1],
        "rho_fp32": fp32["rho"],
        "rho_bf16": bf16["rho"],
        "margin_rel_dev_final": abs(rho_b - rho_f) / abs(rho_f) if rho_f else float("nan"),
        "pair_margin_rel_dev_final": l1 / scale if scale else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODEL_CHOICES, default="smollm2")
    parser.add_argument("--shape", choices=list(vs_trl_workload.SHAPES), default="short_prompt")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, help="default: vs_trl.py's for the shape")
    parser.add_argument("--head", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--reference", choices=("autocast", "fp32"), default="autocast")
    parser.add_argument("--lr", type=float, help="constant lr (default 1e-4 full, 1e-3 LoRA)")
    parser.add_argument("--lora", action="store_true", help="LoRA (gpo's defaults), not full FT")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(RunSpec(**json.loads(Path(args.child).read_text())))
        return
    os.environ.update(vs_trl_children.CHILD_ENV)
    batch = args.batch_size or vs_trl_workload.DEFAULT_BATCH[args.shape]
    if args.lr is None:
        args.lr = 1e-3 if args.lora else 1e-4
    with tempfile.TemporaryDirectory(prefix="gpo-bf16-drift-") as tmp:
        root = Path(tmp)
        wl = vs_trl_workload.build_workload(args.shape, args.model, root, batch, 0, args.steps)
        runs = {}
        choices = dict(head=args.head, reference=args.reference, lr=args.lr, lora=args.lora)
        for precision in ("fp32", "bf16"):
            spec = RunSpec(
                model_dir=wl.model_dir,
                data=wl.gpo_data,
                n_rows=wl.n_rows,
                batch_size=batch,
                steps=args.steps,
                precision=precision,
                out=str(root / precision),
                result=str(root / f"{precision}.json"),
                **choices,
            )
            runs[precision] = run(spec, root / f"{precision}.log")
    result = compare(runs["fp32"], runs["bf16"])
    result.update(model=args.model, shape=args.shape, batch=batch, **choices)
    stream = sys.stderr if args.json else sys.stdout
    print(
        f"{args.model} / {args.shape}, batch {batch}, {args.steps} steps; bf16 head matmul "
        f"{args.head}, reference {args.reference}",
        file=stream,
    )
    print(
        f"{'step':>4} {'loss fp32':>10} {'loss bf16':>10} {'|dev|':>9} {'rho fp32':>10}",
        file=stream,
    )
    for i, (a, b, d, r) in enumerate(
        zip(
            result["loss_fp32"],
            result["loss_bf16"],
            result["loss_abs_dev"],
            result["rho_fp32"],
            strict=True,
        ),
        start=1,
    ):
        print(f"{i:>4} {a:>10.6f} {b:>10.6f} {d:>9.2e} {r:>10.4f}", file=stream)
    print(
        f"loss max |bf16 - fp32| {result['loss_max_abs_dev']:.2e}, final step "
        f"{result['loss_final_abs_dev']:.2e}; final rho fp32 {result['rho_fp32'][-1]:.4f} bf16 "
        f"{result['rho_bf16'][-1]:.4f}: relative deviation {result['margin_rel_dev_final']:.2%}; "
        f"per pair sum|drho| / sum|rho| {result['pair_margin_rel_dev_final']:.2%}",
        file=stream,
    )
    print(
        f"same weights (bf16 scoring of the fp32 run, each step): loss max |dev| "
        f"{result['same_weights_loss_max_abs_dev']:.2e}; per pair sum|drho| / sum|rho| max "
        f"{result['same_weights_pair_margin_rel_dev_max']:.2%} (steps 2-{result['steps']})",
        file=stream,
    )
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
