"""A tiny pi_sft for CPU sweeps: a small random-init Llama SFT-trained on a data set's replies.

Why: SmolLM2-135M takes ~9 s per batch-8 step on 2 CPU cores, far too slow for a loss x beta
sweep. This builds a word-level tokenizer covering the data's vocabulary (its ``vocab_size`` most
frequent words; rarer words become ``<unk>`` and vanish when decoded), a small Llama
(:func:`gpo.models.tiny.tiny_model_and_tokenizer`), and trains it by maximum likelihood on both
completions of every training pair (an estimate of mu, the policy that produced the pairs). The
result, saved with ``save_pretrained``, is the starting point and reference of a sweep's runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from gpo.io import write_json

DONE = "sft.json"  # written last: a folder with it holds a finished pi_sft


@dataclass
class SftConfig:
    data: str = "gold"  # preference data whose completions are imitated (its train split)
    split: str = "train"
    steps: int = 600
    batch_size: int = 32  # sequences per step
    learning_rate: float = 3e-3
    hidden: int = 64
    layers: int = 2
    vocab_size: int = 3000  # most frequent words kept; the rest map to <unk>
    max_length: int = 128  # tokens per prompt + completion
    seed: int = 0


@cache
def _pre_tokenizer() -> Any:
    """The tiny tokenizer's word splitter, built once (it is immutable)."""
    from gpo.models.tiny import tiny_tokenizer

    return tiny_tokenizer([]).backend_tokenizer.pre_tokenizer


def _words(text: str) -> list[str]:
    return [w for w, _ in _pre_tokenizer().pre_tokenize_str(text)]


def build_vocab(texts: Iterable[str], size: int) -> list[str]:
    """The chat template's words, then the ``size`` most frequent words of ``texts``."""
    counts = Counter(w for t in texts for w in _words(t))
    fixed = ["system", "user", "assistant", ":"]
    common = [w for w, _ in counts.most_common(size + len(fixed)) if w not in fixed]
    return fixed + common[:size]


def _texts(rows: list[Any]) -> Iterable[str]:
    for r in rows:
        for f in (r.prompt, r.chosen, r.rejected):
            yield f if isinstance(f, str) else " ".join(m["content"] for m in f)


def _batches(seqs: list[tuple[list[int], list[int]]], cfg: SftConfig, pad: int) -> Any:
    g = torch.Generator().manual_seed(cfg.seed)
    while True:
        for idx in torch.randperm(len(seqs), generator=g).split(cfg.batch_size):
            if len(idx) < cfg.batch_size:
                continue
            chunk = [seqs[i] for i in idx.tolist()]
            width = max(len(p) + len(c) for p, c in chunk)
            ids = torch.full((len(chunk), width), pad)
            labels = torch.full((len(chunk), width), -100)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for k, (p, c) in enumerate(chunk):
                n = len(p) + len(c)
                ids[k, :n] = torch.tensor(p + c)
                labels[k, len(p) : n] = torch.tensor(c)  # loss on the completion only
                mask[k, :n] = 1
            yield ids, mask, labels


def train_tiny_sft(cfg: SftConfig, out: str | Path, progress: bool = True) -> Path:
    """Build and SFT-train the tiny policy into ``out``; reuse it if ``out`` has the same one."""
    from gpo.data.formats import parse_rows
    from gpo.data.prepare import prepare_data
    from gpo.data.sources import load_rows
    from gpo.data.tokenize import Limits
    from gpo.models.tiny import tiny_model_and_tokenizer

    out = Path(out)
    want = dataclasses.asdict(cfg)
    if (out / DONE).is_file() and json.loads((out / DONE).read_text())["config"] == want:
        print(f"pi_sft: reusing {out}", flush=True)
        return out
    t0 = time.perf_counter()
    rows = parse_rows(load_rows(cfg.data, cfg.split), cfg.data)
    words = build_vocab(_texts(rows), cfg.vocab_size)
    model, tokenizer = tiny_model_and_tokenizer(words, cfg.layers, cfg.hidden, cfg.seed)
    limits = Limits(cfg.max_length, None, None, "keep_end")
    data = prepare_data(cfg.data, cfg.split, None, "test", 0.05, tokenizer, limits, cfg.seed)
    seqs = [(p.prompt_ids, c) for p in data.train for c in (p.chosen_ids, p.rejected_ids)]
    unk = sum(c.count(tokenizer.unk_token_id) for _, c in seqs) / sum(len(c) for _, c in seqs)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
        warmup = max(1, min(50, cfg.steps // 10))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)),
        )
        model.train()
        losses = []
        batches = _batches(seqs, cfg, tokenizer.pad_token_id)
        for step in range(1, cfg.steps + 1):
            ids, mask, labels = next(batches)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(loss.item())
            if progress and (step % 100 == 0 or step == cfg.steps):
                recent = sum(losses[-100:]) / len(losses[-100:])
                print(f"pi_sft: step {step}/{cfg.steps} token NLL {recent:.3f}", flush=True)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tail = max(1, min(100, cfg.steps // 10))  # mean over the last 10% of steps (at most 100)
    info = {
        "config": want,
        "vocab": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "sequences": len(seqs),
        "unk_fraction": unk,
        "initial_token_nll": losses[0],
        "final_token_nll": sum(losses[-tail:]) / tail,
        "seconds": time.perf_counter() - t0,
    }
    write_json(out / DONE, info)
    print(
        f"pi_sft: {info['parameters']} parameters, vocab {info['vocab']}, "
        f"{unk:.1%} <unk> tokens, final NLL {info['final_token_nll']:.3f}, "
        f"{info['seconds']:.0f} s -> {out}",
        flush=True,
    )
    return out
