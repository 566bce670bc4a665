"""``gpo data ...``: check a dataset before training on it (:mod:`gpo.data.check`); build and
inspect the built-in gold tasks' preference data (:mod:`gpo.gold`, :mod:`gpo.gold.sentiment`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import time
from pathlib import Path
from typing import Any

from gpo.cli.flags import add_dataclass_flags, values_from_args
from gpo.data.builtin import BUILTIN_TASKS, load_builtin
from gpo.data.check import check_rows, format_check, read_source
from gpo.data.formats import DataError
from gpo.data.tokenize import Limits
from gpo.eval.judges import parse_judge_spec
from gpo.gold.build import build_gold_dataset, format_summary, relabel, summarize
from gpo.gold.sentiment import (
    build_sentiment_dataset,
    format_sentiment_summary,
    summarize_sentiment,
)
from gpo.gold.vader import TEMPERATURE, require_vader
from gpo.io import read_jsonl, write_jsonl
from gpo.train.config import TrainConfig

#: Per task, the build defaults that differ (the gold task's are the shipped file's settings).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "gold": {"n_prompts": 2000, "n_test_prompts": 200, "batch_size": 32},
    "gold-v2": {"n_prompts": 2000, "n_test_prompts": 200, "batch_size": 32},
    "sentiment": {"n_prompts": 2000, "n_test_prompts": 256, "batch_size": 128},
}


def gold_version(task: str) -> int | None:
    """The gold reward's version of a built-in task, read from its judge spec (``gold`` ->
    1, ``gold:version=2`` -> 2); None for a task judged by something else (sentiment)."""
    name, options = parse_judge_spec(BUILTIN_TASKS[task].judge)
    return int(options.get("version", 1)) if name == "gold" else None


def cmd_relabel(args: argparse.Namespace) -> int:
    """Label the pairs of an existing gold file again with this task's version of the reward."""
    version = gold_version(args.task)
    if version is None:
        raise ValueError(f"--relabel: the {args.task} task has no gold reward versions")
    start = time.time()
    rows = relabel(read_jsonl(args.relabel), args.mode, args.seed, version)
    summary = summarize(rows, version)
    out = write_jsonl(rows, args.out)
    command = ["gpo", "data", "build", "--task", args.task, "--relabel", args.relabel.name]
    command += ["--seed", str(args.seed), "--mode", args.mode, "--out", out.name]
    meta = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "relabelled_from": args.relabel.name,
        "seed": args.seed,
        "mode": args.mode,
        "command": shlex.join(command),
        "seconds": round(time.time() - start, 1),
        "summary": summary,
    }
    _meta_path(out).write_text(json.dumps(meta, indent=2) + "\n")
    print(format_summary(summary))
    print(f"wrote {len(rows)} rows to {out} (metadata: {_meta_path(out)})")
    return 0


def cmd_build_gold(args: argparse.Namespace) -> int:
    if args.relabel is not None:
        return cmd_relabel(args)
    for key, value in TASK_DEFAULTS[args.task].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.task == "sentiment":
        require_vader()  # before loading a model: the labels need it
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    from gpo.models.loading import load_model_and_tokenizer  # torch: only for this command

    model, tokenizer = load_model_and_tokenizer(args.model)
    sampling = {  # in the order of the meta file's keys
        "seed": args.seed,
        "mode": args.mode,
        "n_prompts": args.n_prompts,
        "n_test_prompts": args.n_test_prompts,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "batch_size": args.batch_size,
        "show_progress": True,
    }
    extra: dict[str, Any] = {}
    if args.task == "sentiment":
        rows, dropped = build_sentiment_dataset(
            model, tokenizer, label_temperature=args.label_temperature, **sampling
        )
        summary = summarize_sentiment(rows, args.label_temperature)
        text = format_sentiment_summary(summary) + (
            f"\ndropped pairs: {dropped['empty']} with an empty continuation, "
            f"{dropped['identical']} identical"
        )
        extra = {
            "task": "sentiment",
            "label_temperature": args.label_temperature,
            "dropped_pairs": dropped,
            "command": _sentiment_command(args),
            "machine": f"{platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads",
        }
    else:
        version = gold_version(args.task) or 1
        rows = build_gold_dataset(model, tokenizer, **sampling, version=version)
        summary = summarize(rows, version)
        text = format_summary(summary)
    out = write_jsonl(rows, args.out)
    meta = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": args.model,
        **{k: v for k, v in sampling.items() if k not in ("batch_size", "show_progress")},
        "top_p": 1.0,
        "top_k": 0,
        "batch_size": args.batch_size,
        **extra,
        "seconds": round(time.time() - start, 1),
        "summary": summary,
    }
    meta_path = _meta_path(out)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(text)
    print(f"wrote {len(rows)} rows to {out} (metadata: {meta_path}) in {meta['seconds']} s")
    return 0


def _sentiment_command(args: argparse.Namespace) -> str:
    """The command that rebuilds this file (every setting spelled out)."""
    command = [
        *("gpo", "data", "build", "--task", "sentiment", "--out", args.out.name),
        *("--model", args.model, "--n-prompts", str(args.n_prompts)),
        *("--n-test-prompts", str(args.n_test_prompts), "--seed", str(args.seed)),
        *("--mode", args.mode, "--max-new-tokens", str(args.max_new_tokens)),
        *("--temperature", f"{args.temperature:g}", "--batch-size", str(args.batch_size)),
        *("--label-temperature", f"{args.label_temperature:g}"),
    ]
    return shlex.join(command + (["--threads", str(args.threads)] if args.threads else []))


def _meta_path(out: Path) -> Path:
    name = out.name.removesuffix(".gz").removesuffix(".jsonl")
    return out.with_name(name + ".meta.json")


def cmd_gold_stats(args: argparse.Namespace) -> int:
    rows = read_jsonl(args.file) if args.file else load_builtin(args.task, None)
    if args.task == "sentiment":
        summary = summarize_sentiment(rows, args.label_temperature)
        text = format_sentiment_summary(summary)
    else:
        summary = summarize(rows, gold_version(args.task) or 1)
        text = format_summary(summary)
    print(json.dumps(summary, indent=2) if args.json else text)
    return 0


#: The `gpo train` flags `gpo data check` takes, with the same defaults and help.
CHECK_FLAGS = (*(f.name for f in dataclasses.fields(Limits)), "chat_template")


def cmd_check(args: argparse.Namespace) -> int:
    """The data as `gpo train` would make of it: its defaults and checks for this model."""
    from gpo.models.positions import resolve_max_length
    from gpo.models.tokenizer import load_tokenizer, set_chat_template

    given = {k: v for k, v in values_from_args(args, TrainConfig).items() if k in CHECK_FLAGS}
    label, raw = read_source(args.source, args.split, args.online)  # fails before the tokenizer
    tokenizer, config = load_tokenizer(args.model)
    template = given.pop("chat_template", None)
    if template is not None:
        set_chat_template(tokenizer, template)
    max_length, how = resolve_max_length(given.pop("max_length", None), config, args.model)
    result = check_rows(label, raw, tokenizer, Limits(max_length, **given), args.examples)
    own = "its own" if getattr(tokenizer, "chat_template", None) else "none"
    source = f"--chat-template {template}" if template else own
    print(f"model: {args.model} (its tokenizer; chat template: {source})")
    print(f"max_length: {max_length} ({how})")
    print(format_check(result))
    if result.report is not None and (warning := result.report.unknown_warning()):
        print(f"warning: {warning}")
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
    p.add_argument(
        "--online",
        action="store_true",
        help="accept prompt-only rows ({'prompt': ...}), as gpo train --online does",
    )
    add_dataclass_flags(p, TrainConfig, names=CHECK_FLAGS)  # as `gpo train` has them
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
        aliases=["build"],
        help="sample pairs from a model and label them with a gold task's reward (gpo/gold/)",
    )
    p.add_argument("--out", type=Path, required=True, help="output .jsonl or .jsonl.gz")
    _add_task(p)
    p.add_argument("--n-prompts", type=int, help="training prompts, one pair each (default: 2000)")
    p.add_argument(
        "--n-test-prompts", type=int, help="held-out prompts (default: gold 200, sentiment 256)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=["bt", "deterministic"], default="bt", help="labelling")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--batch-size", type=int, help="sampling rows (default: gold 32, sentiment 128)")
    p.add_argument("--model", default="smollm2", help="'smollm2' (embedded) or a model path")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument(
        "--relabel",
        type=Path,
        metavar="FILE",
        help="gold tasks: label FILE's pairs again with this task's reward, instead of sampling",
    )
    p.set_defaults(func=cmd_build_gold)

    p = dsub.add_parser("gold-stats", help="counts and gold-reward statistics of a gold file")
    p.add_argument("file", nargs="?", type=Path, help="default: the task's shipped pairs")
    _add_task(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gold_stats)


def _add_task(p: argparse.ArgumentParser) -> None:
    tasks = sorted({t.name for t in BUILTIN_TASKS.values()})
    p.add_argument(
        "--task",
        choices=tasks,
        default="gold",
        help="the built-in task: gold (gpo/gold/), gold-v2 (its reward with a topic-repetition "
        "term) or sentiment (VADER, gpo/gold/sentiment.py)",
    )
    p.add_argument(
        "--label-temperature",
        type=float,
        default=TEMPERATURE,
        help=f"sentiment: T of the BT labels sigmoid((r*(a) - r*(b)) / T) (default {TEMPERATURE})",
    )
