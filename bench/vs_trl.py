"""gpo vs TRL's ``DPOTrainer``: the same DPO training, timed side by side in one invocation.

    .venv/bin/python bench/vs_trl.py --quick                  # tiny model, both shapes, < 1 min
    .venv/bin/python bench/vs_trl.py                          # + SmolLM2-135M: long, see README
    .venv/bin/python bench/vs_trl.py --models smollm2 --shapes long_prompt --json
    .venv/bin/python bench/vs_trl.py --models smollm2 --shapes variable --trl-best --json
    .venv/bin/python bench/vs_trl.py --models smollm2 --precisions fp32 bf16 --json

Same work (and how it is checked)
- Model: the same folder on both sides, float32, dropout off. Full fine-tuning (default): the
  policy plus an explicit frozen reference with the same weights (gpo: ``frozen_copy``; TRL: a
  second ``from_pretrained`` passed as ``ref_model``). ``--lora``: the same PEFT adapters (r 16,
  alpha 32, all-linear, no dropout), created by ``gpo.models.loading.add_lora`` right after the same
  seeded load on both sides, so their random init is identical; the reference is the policy with
  adapters off on both sides.
- Loss: gpo ``logistic`` = TRL ``sigmoid``, same beta, summed log-probs.
- Optimiser: torch's fused AdamW on both sides: TRL's own default (TRL 1.16's ``DPOConfig``
  defaults to ``optim="adamw_torch_fused"``; the child records and checks it) and gpo's
  (``optim: adamw_fused``). Same lr, betas, eps, weight decay 0, constant schedule, no warm-up,
  max grad norm 1, batch size B, logging every step on both sides; no gradient accumulation
  unless ``--grad-accum K`` (then both tools run K micro-batches of B/K pairs per step: for
  memory, e.g. the ``variable`` shape with full fine-tuning, where TRL's batch-8 process was
  killed for memory on a 24 GiB machine).
  TRL runs as it ships except where equal work needs otherwise: no gradient/activation
  checkpointing (TRL's default is on; gpo does not checkpoint) and, with ``--precisions fp32``
  (the default), no mixed precision (TRL's default is bf16 autocast, even on CPU).
- Precision (``--precisions fp32 bf16``): ``fp32`` as above; ``bf16`` is TRL with its default
  ``bf16=True`` (autocast) against gpo with ``mixed_precision=bf16`` (autocast, with the LM
  head's log-softmax and the sequence sums in float32: ``gpo.models.logps``). bf16 results are
  reported under ``<shape>_bf16``. The two tools round differently in bf16, so their losses are
  not expected to agree within ``LOSS_TOL``; the gap is reported, not judged.
- Data: generated rows (standard format, words drawn from gpo's tiny vocabulary, seeded) whose
  rendered token lengths hit the shape (``long_prompt``: 400-token prompt, 40-token responses;
  ``short_prompt``: 30 / 200; response lengths include the EOS). ``variable``: every row's
  prompt, chosen and rejected lengths drawn independently with a fixed seed from log-normal
  distributions (:data:`VARIABLE`), batch 8 by default: prompts median 100 tokens, sigma 1.1
  (5-95% range ~16-610), clipped to [8, 1024]; responses median 150, sigma 0.75 (5-95% ~44-515),
  clipped to [4, 512]. These parameters are chosen to match the ranges issue 17 states for
  public preference sets (multi-turn prompts of 20 to 1,000+ tokens, responses of a few to
  several hundred); they are not fitted to a data set (none was available offline). A log-normal
  whose upper tail matches cannot also reach ~10 tokens at 5% for the responses: short
  responses are rarer here than in real data, which makes less padding, so the shape is, if
  anything, kind to a padded batch. Both tools pad every batch to its longest row unless told
  otherwise; gpo's ``max_padding`` (``gpo.train.micro_batches``) splits a batch into
  length-homogeneous groups (same losses and gradients). gpo reads the rows from a
  ``.jsonl`` and takes global batches from its seeded permutation
  (``gpo.train.setup.micro_batches``);
  TRL gets the same rows already in that order and reads them with
  ``train_sampling_strategy="sequential"``. So step k sees the same B pairs on both sides.
- ``--trl-best`` adds, in every round, a third process: TRL at its best CPU settings, i.e.
  gpo's malloc setting (as ``--trl-reuse-host-memory``) and fused AdamW (its default anyway),
  with ``padding_free=True`` requested; TRL 1.16 turns that off again with a warning
  ("temporarily unavailable after a refactor", TRL issue #3906), and the child records what TRL
  kept (``trl_padding_free`` in the table). Reported under ``<shape>_trl_best``, same schema,
  against the same gpo runs.
- Checked: (1) the TRL child hashes the ``prompt_ids``/``chosen_ids``/``rejected_ids`` TRL built
  and the parent compares them with gpo's tokenization of the same rows in the same order
  ("same tokens"); (2) the per-step training losses (each computed before its update) of both
  tools' first run are compared; ``loss_max_abs_diff`` is the largest gap over all
  ``warmup + steps`` steps, flagged if above ``LOSS_TOL`` (1e-4). After step 1 the losses depend
  on every earlier update, so agreement means same batches, same gradients and same optimiser
  steps. At step 1 the policy equals the reference, so both losses are exactly log 2; later steps
  move away from it. The float32 floor is ~1e-5: a summed log-prob over 200 tokens is ~1000 nats,
  so each side rounds it to ~1e-4 in its own summation order, and the loss moves by ~beta/2 times
  that. It does not shrink with the learning rate (measured on the tiny model, short_prompt:
  2-4e-5 at lr 1e-6, 1e-5 and 1e-4 alike), so it is rounding, not a different update.

Timing
- Each (tool, round) runs in a fresh subprocess, alternating gpo, TRL, gpo, TRL, ... for
  ``--repeats`` rounds per (shape, model). Peak RSS is ``ru_maxrss`` read inside that child at
  the end (model loading, data preparation and training included).
- Inside a child, a timestamp is taken at the end of every optimiser step: TRL with a
  ``TrainerCallback.on_step_end``; gpo with a ``Trainer`` subclass whose ``_micro_step`` (one
  optimiser step here: no accumulation) records the time after the step returns. The timed span
  is end of step ``warmup`` -> end of step ``warmup + steps``: exactly ``steps`` steady-state
  steps, each including its batch collation, forward/backward, optimiser step and per-step
  logging, and nothing of the setup. ``--warmup`` must be >= 1.
- pairs/s = B * steps / span (median over rounds; min-max shown in the table).
  tokens/s = real (non-pad) prompt + chosen + rejected tokens of the timed pairs / span; the
  prompt counts once although both tools currently run it twice (once per response).
- Model FLOP/s = k * N * tokens/s, N = weights of the base model's ``nn.Linear`` layers (LM head
  included; embedding lookup, attention-score matmuls and LoRA adapters not counted). Full
  fine-tuning k = 8: 6 for the policy's forward + backward, 2 for the reference forward. LoRA
  k = 6: the policy's backward still propagates activation gradients (2N) but computes no
  base-weight gradients. "% peak" is that over the fp32 matmul peak measured by this script
  (best of several 2048^3 ``a @ b``).

``--json`` prints ``{key: {model: {gpo_pairs_per_s, trl_pairs_per_s, ratio, gpo_peak_rss_mb,
trl_peak_rss_mb, loss_max_abs_diff}}}`` on stdout (the readable table then goes to stderr); the
key is the shape (``long_prompt``, ``short_prompt``, ``variable``), with ``_bf16`` appended for
bf16 runs and ``_trl_best`` for the comparison against ``--trl-best``'s TRL process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vs_trl_children import CHILD_ENV, ChildSpec, child_main, run_script_child
from vs_trl_report import report, tool_stats
from vs_trl_workload import DEFAULT_BATCH, FIXED_SHAPES, SHAPES, Workload, build_workload

PRECISIONS = ("fp32", "bf16")
MODELS = ("tiny", "smollm2")
TOOLS = ("gpo", "trl")
TRL_BEST = "trl_best"  # --trl-best: TRL with gpo's malloc setting, fused AdamW, padding_free
#: default timed steps per model (a tiny step takes milliseconds, a SmolLM2 step seconds)
DEFAULT_STEPS = {"tiny": 30, "smollm2": 5}
QUICK = {"steps": 10, "warmup": 2, "repeats": 1}


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` float32 ``n^3`` matmul, in FLOP/s (same threads as the children)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def run_child(spec: ChildSpec, log: Path) -> dict[str, Any]:
    spec_path = Path(spec.work_dir) / "spec.json"
    return run_script_child(__file__, spec, spec_path, log, f"{spec.tool} child")


def _spec(
    tool: str, wl: Workload, args: argparse.Namespace, cell: dict[str, Any], work: Path
) -> ChildSpec:
    """One child's spec; ``tool`` is ``gpo``, ``trl`` or ``trl_best`` (a TRL process)."""
    return ChildSpec(
        tool="gpo" if tool == "gpo" else "trl",
        model_dir=wl.model_dir,
        data=wl.gpo_data if tool == "gpo" else wl.trl_data,
        n_rows=wl.n_rows,
        batch_size=cell["batch"],
        warmup=args.warmup,
        steps=cell["steps"],
        learning_rate=cell["lr"],
        lora=args.lora,
        work_dir=str(work),
        result=str(work / "result.json"),
        gpo_options=args.gpo_options,
        trl_reuse_host_memory=args.trl_reuse_host_memory or tool == TRL_BEST,
        trl_padding_free=tool == TRL_BEST,
        precision=cell["precision"],
        grad_accum=args.grad_accum,
    )


def run_cell(
    shape: str,
    model: str,
    precision: str,
    root: Path,
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> dict[str, Any]:
    steps = args.steps if args.steps is not None else DEFAULT_STEPS[model]
    batch = args.batch_size if args.batch_size is not None else DEFAULT_BATCH[shape]
    if batch % args.grad_accum:
        raise ValueError(f"--grad-accum {args.grad_accum} does not divide the batch {batch}")
    wl = build_workload(shape, model, root, batch, args.warmup, steps, args.grad_accum)
    p, c, r = wl.mean_lengths
    (p_lo, p_hi), (r_lo, r_hi) = wl.length_range
    say(
        f"{shape}/{model}/{precision}: {wl.n_rows} pairs, mean tokens prompt {p:.0f} "
        f"[{p_lo}-{p_hi}] chosen {c:.0f} rejected {r:.0f} [{r_lo}-{r_hi}]; padding in TRL's "
        f"batches {100 * wl.padding_share:.0f}%; batch {batch} (micro-batches of "
        f"{batch // args.grad_accum}), {args.warmup} warm-up + "
        f"{steps} timed steps"
    )
    lr = args.lr if args.lr is not None else (1e-3 if args.lora else 1e-4)
    cell = {"steps": steps, "batch": batch, "lr": lr, "precision": precision}
    tools = [*TOOLS, TRL_BEST] if args.trl_best else list(TOOLS)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    for rnd in range(args.repeats):
        for tool in tools:  # A B A B ...
            work = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=root))
            t0 = time.perf_counter()
            out = run_child(_spec(tool, wl, args, cell, work), work / "log.txt")
            ends = out["step_ends"]
            span = ends[-1] - ends[args.warmup - 1]
            say(
                f"  round {rnd + 1} {tool}: {batch * steps / span:.3f} pairs/s, "
                f"{span / steps:.3f} s/step, peak RSS {out['peak_rss_mb']:.0f} MB "
                f"(process {time.perf_counter() - t0:.1f} s)"
            )
            runs[tool].append(out)
    stats = {t: tool_stats(runs[t], wl, batch, args.warmup, steps) for t in tools}
    g = stats["gpo"]
    diffs = {}
    for tool in tools[1:]:
        t = stats[tool]
        if len(g.losses) != len(t.losses):
            raise RuntimeError(f"logged {len(g.losses)} gpo vs {len(t.losses)} {tool} losses")
        diffs[tool] = max(abs(a - b) for a, b in zip(g.losses, t.losses, strict=True))
    return {
        "stats": stats,
        "workload": wl,
        **cell,
        "same_tokens": {t: stats[t].token_digest == wl.trl_digest for t in tools[1:]},
        "loss_max_abs_diff": diffs,
    }


def _gpo_options(items: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    import yaml

    from gpo.train.config import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            parser.error(f"--gpo-option {item!r}: expected KEY=VALUE with a TrainConfig key")
        options[key] = yaml.safe_load(value)
    return options


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps, < 1 min")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--steps", type=int, help="timed steps (default: tiny 30, smollm2 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (>= 1)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of gpo, TRL")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=list(SHAPES),
        default=list(FIXED_SHAPES),
        help="default: the two fixed shapes; 'variable' adds real-shaped lengths",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=["fp32"],
        help="bf16: TRL bf16=True against gpo mixed_precision=bf16 (keys <shape>_bf16)",
    )
    parser.add_argument(
        "--batch-size", type=int, help="pairs per step (default: 2, variable shape 8)"
    )
    parser.add_argument(
        "--grad-accum",
        type=int,
        default=1,
        help="split each step's batch into this many micro-batches, both tools (memory)",
    )
    parser.add_argument("--lora", action="store_true", help="LoRA instead of full fine-tuning")
    parser.add_argument("--lr", type=float, help="default 1e-4 (full), 1e-3 (LoRA)")
    parser.add_argument(
        "--gpo-option",
        action="append",
        default=[],
        metavar="KEY=YAML",
        help="a gpo TrainConfig override, e.g. share_prompt=false or ref_cache=/tmp/c "
        "(per-technique measurements; repeatable)",
    )
    parser.add_argument(
        "--trl-reuse-host-memory",
        action="store_true",
        help="apply gpo's malloc setting (reuse_host_memory, gpo/train/host_memory.py) to TRL too",
    )
    parser.add_argument(
        "--trl-best",
        action="store_true",
        help="also run TRL at its best CPU settings (gpo's malloc setting, fused AdamW, "
        "padding_free asked for); reported under <shape>_trl_best",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.gpo_options = _gpo_options(args.gpo_option, parser)
    if args.child:
        child_main(args.child)
        return
    if args.quick:
        args.models = ["tiny"]
        args.steps = args.steps if args.steps is not None else QUICK["steps"]
        args.warmup, args.repeats = QUICK["warmup"], QUICK["repeats"]
    if args.warmup < 1 or args.repeats < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--warmup, --repeats and --steps must be >= 1")
    if args.grad_accum < 1:
        parser.error("--grad-accum must be >= 1")
    os.environ.update(CHILD_ENV)

    stream = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    import torch

    t0 = time.perf_counter()
    say(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    peak = matmul_peak_flops()
    results: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="gpo-vs-trl-") as tmp:
        for shape in args.shapes:
            for precision in args.precisions:
                results[(shape, precision)] = {
                    m: run_cell(shape, m, precision, Path(tmp), args, say) for m in args.models
                }
    out = report(results, peak, args, say)
    say(f"\ntotal wall time {time.perf_counter() - t0:.1f} s")
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
