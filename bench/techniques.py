"""Per-technique gains of gpo's training step, each measured on the same work as ``vs_trl.py``.

    .venv/bin/python bench/techniques.py                   # SmolLM2, both shapes (~15 min)
    .venv/bin/python bench/techniques.py --models tiny     # quick check of the harness

Variants run gpo alone (same data, batches, model, fp32 full fine-tuning as ``vs_trl.py``), each
in a fresh process, adding one technique at a time:

- ``plain``: the prompt run once per response, torch's default (per-tensor) AdamW, glibc's
  default malloc settings, the head's token log-probs by ``torch.nn.functional.cross_entropy``;
- ``+prefix sharing``: the prompt run once for both responses (``share_prompt``);
- ``+fused AdamW``: ``optim=adamw_fused`` (TRL users get it with ``optim="adamw_torch_fused"``);
- ``+reuse host memory``: ``reuse_host_memory`` (freed memory kept for the next step instead of
  re-faulted: ``gpo/train/host_memory.py``);
- ``+fused target log-prob``: ``gpo.models.logps._TargetLogProb`` instead of cross-entropy;
- ``+length groups``: ``max_padding`` at its default (0.1): a micro-batch with more padding runs
  as length-homogeneous groups (``gpo/train/length_groups.py``). Every row above runs padded
  batches (``max_padding=1``); on the fixed shapes there is no padding, so the two are the same
  work there. All of gpo's defaults from here on;
- ``one pair per group``: ``max_padding=0`` (each pair its own group when the batch has any
  padding);
- ``+warm reference cache``: pi_ref's log-probs read from the on-disk cache, filled by one
  untimed run first (what a second run or sweep member on the same data gets);
- ``bf16 autocast``: the default with ``mixed_precision=bf16`` (speed and the loss gap to fp32).

Each row reports pairs/s (median of ``--repeats``), the gain over the row it builds on (for the
bf16 and cache rows: over the defaults, ``+length groups``), and the largest per-step loss gap
to the first variant run (``plain`` by default).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vs_trl  # the gpo child
import vs_trl_children
import vs_trl_workload

#: ``cross_entropy_head`` is not a gpo option: it goes to the child's ``ChildSpec``.
PLAIN = {
    "max_padding": 1.0,
    "share_prompt": False,
    "optim": "adamw",
    "reuse_host_memory": False,
    "cross_entropy_head": True,
}
#: name -> (gpo options, the variant its gain is measured against)
VARIANTS: dict[str, tuple[dict[str, Any], str | None]] = {
    "plain": (PLAIN, None),
    "+prefix sharing": ({**PLAIN, "share_prompt": True}, "plain"),
    "+fused AdamW": (
        {"max_padding": 1.0, "reuse_host_memory": False, "cross_entropy_head": True},
        "+prefix sharing",
    ),
    "+reuse host memory": ({"max_padding": 1.0, "cross_entropy_head": True}, "+fused AdamW"),
    "+fused target log-prob": ({"max_padding": 1.0}, "+reuse host memory"),
    "+length groups": ({}, "+fused target log-prob"),
    "one pair per group": ({"max_padding": 0.0}, "+length groups"),
    "+warm reference cache": ({"ref_cache": "CACHE"}, "+length groups"),
    "bf16 autocast": ({"mixed_precision": "bf16"}, "+length groups"),
}


def run_variant(
    wl: vs_trl_workload.Workload,
    options: dict[str, Any],
    args: argparse.Namespace,
    root: Path,
    lr: float,
    batch: int,
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gpo-", dir=root))
    options = dict(options)
    cross_entropy_head = options.pop("cross_entropy_head", False)
    spec = vs_trl_children.ChildSpec(
        tool="gpo",
        model_dir=wl.model_dir,
        data=wl.gpo_data,
        n_rows=wl.n_rows,
        batch_size=batch,
        warmup=args.warmup,
        steps=args.steps,
        learning_rate=lr,
        lora=False,
        work_dir=str(work),
        result=str(work / "result.json"),
        gpo_options=options,
        cross_entropy_head=cross_entropy_head,
    )
    out = vs_trl.run_child(spec, work / "log.txt")
    ends = out["step_ends"]
    out["pairs_per_s"] = batch * args.steps / (ends[-1] - ends[args.warmup - 1])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=vs_trl.MODELS, default=["smollm2"])
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=list(vs_trl_workload.SHAPES),
        default=list(vs_trl_workload.FIXED_SHAPES),
        help="default: the two fixed shapes; 'variable': vs_trl.py's real-shaped lengths",
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, help="default: 2, variable shape 8")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="a subset to run (gains are then against the nearest variant run before)",
    )
    args = parser.parse_args(argv)
    lr = 1e-4
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpo-techniques-") as tmp:
        root = Path(tmp)
        for shape in args.shapes:
            batch = args.batch_size or vs_trl_workload.DEFAULT_BATCH[shape]
            for model in args.models:
                wl = vs_trl_workload.build_workload(
                    shape, model, root, batch, args.warmup, args.steps
                )
                print(
                    f"\n== {shape} / {model}: batch {batch}, {args.steps} timed steps, padding "
                    f"in TRL-style batches {100 * wl.padding_share:.0f}%"
                )
                print(f"{'variant':<24} {'pairs/s':>8} {'gain':>7} {'loss gap':>9} {'RSS MB':>7}")
                cache = str(root / f"cache-{shape}-{model}")
                pairs: dict[str, float] = {}
                plain_losses: list[float] = []
                for name in args.variants:
                    raw, against = VARIANTS[name]
                    while against is not None and against not in pairs:
                        against = VARIANTS[against][1]
                    options = {k: cache if v == "CACHE" else v for k, v in raw.items()}
                    if "ref_cache" in options:  # fill the cache with one untimed run
                        run_variant(wl, options, args, root, lr, batch)
                    runs = [
                        run_variant(wl, options, args, root, lr, batch) for _ in range(args.repeats)
                    ]
                    pairs[name] = statistics.median(r["pairs_per_s"] for r in runs)
                    losses = runs[0]["losses"]
                    plain_losses = plain_losses or losses
                    gain = pairs[name] / pairs[against] if against else 1.0
                    gap = max(abs(a - b) for a, b in zip(losses, plain_losses, strict=True))
                    rss = max(r["peak_rss_mb"] for r in runs)
                    print(
                        f"{name:<24} {pairs[name]:>8.3f} {gain:>6.2f}x {gap:>9.1e} {rss:>7.0f}",
                        flush=True,
                    )
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
