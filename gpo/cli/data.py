"""``gpo data ...``: check a dataset before training on it (:mod:`gpo.data.check`); build and
inspect the built-in gold preference data (see :mod:`gpo.gold`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from gpo.cli.flags import add_dataclass_flags, values_from_args
from gpo.data.builtin import load_builtin_gold
from gpo.data.check import check_rows, format_check, read_source
from gpo.data.formats import DataError
from gpo.data.hub import check_hub_reachable, hub_offline
from gpo.data.sources import looks_like_path
from gpo.data.tokenize import Limits
from gpo.gold.build import build_gold_dataset, format_summary, summarize
from gpo.io import read_jsonl, write_jsonl


def cmd_build_gold(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.time()
    from gpo.models.loading import load_model_and_tokenizer  # torch: only for this command

    model, tokenizer = load_model_and_tokenizer(args.model)
    rows = build_gold_dataset(
        model,
        tokenizer,
        n_prompts=args.n_prompts,
        seed=args.seed,
        n_test_prompts=args.n_test_prompts,
        mode=args.mode,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        batch_size=args.batch_size,
        show_progress=True,
    )
    out = write_jsonl(rows, args.out)
    summary = summarize(rows)
    meta = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": args.model,
        "seed": args.seed,
        "mode": args.mode,
        "n_prompts": args.n_prompts,
        "n_test_prompts": args.n_test_prompts,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "batch_size": args.batch_size,
        "seconds": round(time.time() - start, 1),
        "summary": summary,
    }
    meta_path = _meta_path(out)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(format_summary(summary))
    print(f"wrote {len(rows)} rows to {out} (metadata: {meta_path}) in {meta['seconds']} s")
    return 0


def _meta_path(out: Path) -> Path:
    name = out.name.removesuffix(".gz").removesuffix(".jsonl")
    return out.with_name(name + ".meta.json")


def cmd_gold_stats(args: argparse.Namespace) -> int:
    rows = read_jsonl(args.file) if args.file else load_builtin_gold(None)
    summary = summarize(rows)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _load_tokenizer(name: str) -> Any:
    """Only the tokenizer: checking data should not load (or download) a model's weights."""
    from transformers import AutoTokenizer

    from gpo.models.embedded import resolve_model_path

    path = resolve_model_path(name)
    if not Path(path).expanduser().exists():
        if looks_like_path(path):
            raise ValueError(f"model path {path} does not exist")
        if not hub_offline("TRANSFORMERS_OFFLINE"):
            check_hub_reachable(f"model {name!r}")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the tokenizer of model {name!r}: {e}") from None


def cmd_check(args: argparse.Namespace) -> int:
    limits = Limits(**values_from_args(args, Limits))
    label, raw = read_source(args.source, args.split)  # a bad file fails before the tokenizer
    result = check_rows(label, raw, _load_tokenizer(args.model), limits, args.examples)
    print(f"model: {args.model} (its tokenizer and chat template)")
    print(format_check(result))
    if result.problem:  # what `gpo train` would stop with, as the last line
        raise DataError(result.problem)
    return 0


def _add_check_parser(dsub: Any) -> None:
    p = dsub.add_parser(
        "check",
        help="what training would make of a dataset: format, rows kept/dropped and why, "
        "token lengths, rendered examples",
    )
    p.add_argument("source", help="jsonl/json/parquet/csv file, saved dataset folder or hub name")
    p.add_argument("--split", default="train", help="the split to check (default: train)")
    p.add_argument(
        "--model", default="smollm2", help="whose tokenizer and chat template (default: smollm2)"
    )
    p.add_argument("--examples", type=int, default=3, help="rendered pairs to show (default: 3)")
    add_dataclass_flags(p, Limits)  # the same limit flags, defaults and help as `gpo train`
    p.set_defaults(func=cmd_check)


def add_data_parser(sub: Any) -> None:
    """Register ``gpo data`` (check, build-gold, gold-stats) on the top-level subparsers."""
    data = sub.add_parser(
        "data", help="check a preference dataset; build or inspect the built-in gold data"
    )
    dsub = data.add_subparsers(dest="data_command", required=True)
    _add_check_parser(dsub)

    p = dsub.add_parser(
        "build-gold",
        help="sample pairs from a model and label them with the gold reward (gpo/gold/)",
    )
    p.add_argument("--out", type=Path, required=True, help="output .jsonl or .jsonl.gz")
    p.add_argument("--n-prompts", type=int, default=2000, help="training prompts (one pair each)")
    p.add_argument("--n-test-prompts", type=int, default=200, help="held-out prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=["bt", "deterministic"], default="bt", help="labelling")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--model", default="smollm2", help="'smollm2' (embedded) or a model path")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.set_defaults(func=cmd_build_gold)

    p = dsub.add_parser("gold-stats", help="counts and gold-reward statistics of a gold file")
    p.add_argument("file", nargs="?", type=Path, help="default: the shipped gold pairs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gold_stats)
