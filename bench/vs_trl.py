"""gpo vs TRL's ``DPOTrainer``: the same DPO training, timed side by side in one invocation.

    .venv/bin/python bench/vs_trl.py --quick                  # tiny model, both shapes, < 1 min
    .venv/bin/python bench/vs_trl.py                          # + SmolLM2-135M: long, see README
    .venv/bin/python bench/vs_trl.py --models smollm2 --shapes long_prompt --json

Same work (and how it is checked)
- Model: the same folder on both sides, float32, dropout off. Full fine-tuning (default): the
  policy plus an explicit frozen reference with the same weights (gpo: ``frozen_copy``; TRL: a
  second ``from_pretrained`` passed as ``ref_model``). ``--lora``: the same PEFT adapters (r 16,
  alpha 32, all-linear, no dropout), created by ``gpo.models.loading.add_lora`` right after the same
  seeded load on both sides, so their random init is identical; the reference is the policy with
  adapters off on both sides.
- Loss: gpo ``logistic`` = TRL ``sigmoid``, same beta, summed log-probs.
- Optimiser: torch AdamW (TRL ``optim="adamw_torch"``, not the fused variant), same lr, betas,
  eps, weight decay 0, constant schedule, no warm-up, max grad norm 1, batch size B, no gradient
  accumulation, no gradient/activation checkpointing (TRL's default is on), no mixed precision
  (TRL's default is bf16 autocast, even on CPU), logging every step on both sides.
- Data: generated rows (standard format, words drawn from gpo's tiny vocabulary, seeded) whose
  rendered token lengths hit the shape (``long_prompt``: 400-token prompt, 40-token responses;
  ``short_prompt``: 30 / 200; response lengths include the EOS). gpo reads the rows from a
  ``.jsonl`` and takes global batches from its seeded permutation
  (``gpo.train.setup.micro_batches``);
  TRL gets the same rows already in that order and reads them with
  ``train_sampling_strategy="sequential"``. So step k sees the same B pairs on both sides.
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

``--json`` prints ``{shape: {model: {gpo_pairs_per_s, trl_pairs_per_s, ratio, gpo_peak_rss_mb,
trl_peak_rss_mb, loss_max_abs_diff}}}`` on stdout (the readable table then goes to stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: shape -> (prompt tokens, tokens of each response including its EOS)
SHAPES: dict[str, tuple[int, int]] = {"long_prompt": (400, 40), "short_prompt": (30, 200)}
MODELS = ("tiny", "smollm2")
TOOLS = ("gpo", "trl")
SEED = 0
BETA = 0.1
LOSS_TOL = 1e-4  # "same work": per-step losses of the two tools agree within this
#: default timed steps per model (a tiny step takes milliseconds, a SmolLM2 step seconds)
DEFAULT_STEPS = {"tiny": 30, "smollm2": 5}
QUICK = {"steps": 10, "warmup": 2, "repeats": 1}
LORA_R, LORA_ALPHA, LORA_DROPOUT, LORA_TARGETS = 16, 32, 0.0, "all-linear"
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


@dataclasses.dataclass
class ChildSpec:
    """What one child process trains (written as JSON, read back by the child)."""

    tool: str
    model_dir: str
    data: str  # gpo: rows in source order; TRL: the same rows in gpo's batch order
    n_rows: int
    batch_size: int
    warmup: int
    steps: int
    learning_rate: float
    lora: bool
    work_dir: str
    result: str
    gpo_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    trl_reuse_host_memory: bool = False  # give TRL gpo's malloc setting (gpo.train.host_memory)
    cross_entropy_head: bool = False  # gpo: torch's cross_entropy for the head (techniques.py)


# --- children --------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _token_digest(rows: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]]) -> str:
    blob = json.dumps([[list(p), list(c), list(r)] for p, c, r in rows]).encode()
    return hashlib.sha256(blob).hexdigest()


def _use_cross_entropy_head() -> None:
    """Token log-probs by ``-cross_entropy`` (gpo before ``_TargetLogProb``), to measure it."""
    import torch.nn.functional as F

    import gpo.models.logps

    class CrossEntropy:
        @staticmethod
        def apply(logits: Any, targets: Any) -> Any:
            return -F.cross_entropy(logits, targets, reduction="none")

    gpo.models.logps._TargetLogProb = CrossEntropy  # type: ignore[assignment,misc]


def run_gpo_child(spec: ChildSpec) -> dict[str, Any]:
    from gpo.train.config import TrainConfig
    from gpo.train.tracking import read_metrics
    from gpo.train.trainer import Trainer

    class TimedTrainer(Trainer):
        """Records the end time of every optimiser step (one micro-step each: no accumulation);
        skips the final model save and plots, which TRL's run does not do either."""

        step_ends: list[float]

        def _micro_step(self, step: int, micro: int, indices: list[int]) -> Any:
            out = super()._micro_step(step, micro, indices)
            self.step_ends.append(time.perf_counter())
            return out

        def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
            self.tracker.close()
            self.acc.end_training()
            return summary

    cfg = TrainConfig(
        model=spec.model_dir,
        data=spec.data,
        eval_data=spec.data,  # set so that no training row is held out; never evaluated
        eval_split=None,
        loss="logistic",
        beta=BETA,
        finetune="lora" if spec.lora else "full",
        lora_r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        lora_target_modules=LORA_TARGETS,
        max_length=100_000,
        max_steps=spec.warmup + spec.steps,
        batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        weight_decay=0.0,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        max_grad_norm=1.0,
        seed=SEED,
        out=str(Path(spec.work_dir) / "run"),
        logging_steps=1,
        eval_steps=0,
        kl_prompts=0,
        gold_eval_prompts=0,
        save_steps=0,
        report_to=["none"],
        progress=False,
        ref_cache="none",  # TRL computes pi_ref every step; --gpo-option ref_cache=DIR to cache
    )
    cfg = dataclasses.replace(cfg, **spec.gpo_options)
    if spec.cross_entropy_head:
        _use_cross_entropy_head()
    trainer = TimedTrainer(cfg)
    trainer.step_ends = []
    train = trainer.data.train
    if len(train) != spec.n_rows or any(p.index != i for i, p in enumerate(train)):
        raise RuntimeError(f"gpo kept {len(train)} of {spec.n_rows} rows, or reordered them")
    trainer.run()
    losses = [r["loss"] for r in read_metrics(trainer.run_dir) if "loss" in r]
    return {
        "step_ends": trainer.step_ends,
        "losses": losses,
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_trl_child(spec: ChildSpec) -> dict[str, Any]:
    import datasets
    import torch
    from accelerate.utils import set_seed
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from gpo.models.loading import add_lora, disable_dropout, load_model_and_tokenizer

    step_ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step_ends.append(time.perf_counter())

    if spec.trl_reuse_host_memory:
        from gpo.train.host_memory import reuse_freed_memory

        reuse_freed_memory()
    # the same calls, in the same order after the same seed, as gpo's Trainer (LoRA init matches)
    set_seed(SEED)
    model, tokenizer = load_model_and_tokenizer(spec.model_dir, "float32")
    disable_dropout(model)
    ref_model = None
    if spec.lora:
        model = add_lora(model, LORA_R, LORA_ALPHA, LORA_DROPOUT, LORA_TARGETS)
    else:
        ref_model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=torch.float32)
    rows = [json.loads(line) for line in Path(spec.data).read_text().splitlines() if line]
    args = DPOConfig(
        output_dir=str(Path(spec.work_dir) / "trl_out"),
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=1,
        max_steps=spec.warmup + spec.steps,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        loss_type=["sigmoid"],
        beta=BETA,
        max_length=None,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        bf16=False,  # DPOConfig defaults to bf16 autocast, on CPU too
        fp16=False,
        activation_checkpointing=False,  # DPOConfig defaults to gradient checkpointing
        disable_dropout=True,
        precompute_ref_log_probs=False,
        use_cpu=True,
        seed=SEED,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    if trainer.args.activation_checkpointing or trainer.args.bf16:
        raise RuntimeError("TRL config: checkpointing or bf16 is on")
    ds = trainer.train_dataset
    ids = zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True)
    digest = _token_digest(list(ids))
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e and "train_loss" not in e]
    return {
        "step_ends": step_ends,
        "losses": [float(e["loss"]) for e in sorted(logged, key=lambda e: e["step"])],
        "peak_rss_mb": _peak_rss_mb(),
        "token_digest": digest,
    }


def child_main(spec_path: str) -> None:
    spec = ChildSpec(**json.loads(Path(spec_path).read_text()))
    t0 = time.perf_counter()
    result = (run_gpo_child if spec.tool == "gpo" else run_trl_child)(spec)
    result["child_wall_s"] = time.perf_counter() - t0
    Path(spec.result).write_text(json.dumps(result))


# --- parent: models, data, peak -------------------------------------------------------------


def model_dir(name: str, root: Path) -> str:
    if name == "tiny":
        from transformers.utils import logging as hf_logging

        from gpo.models.tiny import tiny_model_and_tokenizer

        path = root / "tiny"
        if not path.exists():
            hf_logging.disable_progress_bar()
            model, tokenizer = tiny_model_and_tokenizer(seed=SEED)
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
        return str(path)
    from gpo.models.embedded import resolve_model_path

    return resolve_model_path("smollm2")


def _word_pool() -> list[str]:
    from gpo.models.tiny import DEFAULT_WORDS

    roles = {"system", "user", "assistant"}
    return [w for w in DEFAULT_WORDS if w.isalpha() and w not in roles]


def _fit_words(
    rng: random.Random, pool: list[str], target: int, count: Callable[[str], int]
) -> str:
    """Random words whose token count (by ``count``) is the largest not above ``target``."""
    words = [rng.choice(pool) for _ in range(target)]
    k = target
    while k > 1 and count(" ".join(words[:k])) > target:
        k -= 1
    while True:
        if k + 1 > len(words):
            words.append(rng.choice(pool))
        if count(" ".join(words[: k + 1])) > target:
            return " ".join(words[:k])
        k += 1


def make_rows(tokenizer: Any, n: int, prompt_len: int, response_len: int) -> list[dict[str, str]]:
    """``n`` standard rows: prompt ~``prompt_len`` tokens, responses ~``response_len`` (+EOS)."""
    rng = random.Random(SEED)
    pool = _word_pool()

    def n_tokens(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    def response_tokens(text: str) -> int:
        return n_tokens(" " + text) + 1  # + the EOS both tools append

    rows = []
    for _ in range(n):
        prompt = _fit_words(rng, pool, prompt_len, n_tokens)
        chosen = rejected = ""
        while chosen == rejected:
            chosen = _fit_words(rng, pool, response_len, response_tokens)
            rejected = _fit_words(rng, pool, response_len, response_tokens)
        rows.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
    return rows


@dataclasses.dataclass
class Workload:
    """One (shape, model) cell: data files, the batch order, token counts."""

    model_dir: str
    gpo_data: str
    trl_data: str
    n_rows: int
    timed_tokens: int  # real prompt + chosen + rejected tokens of the timed pairs
    mean_lengths: tuple[float, float, float]  # prompt, chosen, rejected
    trl_digest: str  # gpo's token ids in TRL's row order
    linear_params: int  # N in the FLOP estimate


def build_workload(
    shape: str, model: str, root: Path, batch: int, warmup: int, steps: int
) -> Workload:
    from transformers import AutoTokenizer

    from gpo.data import Limits, parse_rows, tokenize_rows
    from gpo.train.setup import micro_batches

    path = model_dir(model, root)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    n = batch * (warmup + steps)
    rows = make_rows(tokenizer, n, *SHAPES[shape])
    pairs, report = tokenize_rows(parse_rows(rows, shape), tokenizer, Limits(100_000), shape)
    if report.kept != n:
        raise RuntimeError(f"{shape}/{model}: tokenization dropped rows: {report}")
    batches = micro_batches(n, batch, SEED, 0)
    order = [i for _ in range(warmup + steps) for i in next(batches)[1]]
    cell = root / f"{shape}-{model}"
    cell.mkdir(parents=True, exist_ok=True)
    gpo_data, trl_data = cell / "gpo.jsonl", cell / "trl.jsonl"
    gpo_data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trl_data.write_text("".join(json.dumps(rows[i]) + "\n" for i in order))
    timed = [pairs[i] for i in order[warmup * batch :]]
    tokens = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in timed)
    lengths = (
        statistics.fmean(len(p.prompt_ids) for p in pairs),
        statistics.fmean(len(p.chosen_ids) for p in pairs),
        statistics.fmean(len(p.rejected_ids) for p in pairs),
    )
    in_order = [pairs[i] for i in order]
    digest = _token_digest([(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in in_order])
    n_linear = linear_params(path)
    return Workload(path, str(gpo_data), str(trl_data), n, tokens, lengths, digest, n_linear)


def linear_params(path: str) -> int:
    """Weights of the model's ``nn.Linear`` layers (LM head included), built on the meta device."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


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


# --- parent: runs and report ----------------------------------------------------------------


def run_child(spec: ChildSpec, log: Path) -> dict[str, Any]:
    spec_path = Path(spec.work_dir) / "spec.json"
    spec_path.write_text(json.dumps(dataclasses.asdict(spec)))
    env = {**os.environ, **CHILD_ENV}
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{spec.tool} child failed (exit {proc.returncode}):\n{tail}")
    return json.loads(Path(spec.result).read_text())


@dataclasses.dataclass
class ToolStats:
    pairs_per_s: list[float]
    tokens_per_s: list[float]
    peak_rss_mb: list[float]
    losses: list[float]  # first round
    token_digest: str | None


def _stats(
    runs: list[dict[str, Any]], wl: Workload, batch: int, warmup: int, steps: int
) -> ToolStats:
    pairs, tokens = [], []
    for r in runs:
        ends = r["step_ends"]
        if len(ends) != warmup + steps:
            raise RuntimeError(f"expected {warmup + steps} step timestamps, got {len(ends)}")
        span = ends[warmup + steps - 1] - ends[warmup - 1]
        pairs.append(batch * steps / span)
        tokens.append(wl.timed_tokens / span)
    return ToolStats(
        pairs,
        tokens,
        [r["peak_rss_mb"] for r in runs],
        runs[0]["losses"],
        runs[0].get("token_digest"),
    )


def run_cell(
    shape: str, model: str, root: Path, args: argparse.Namespace, say: Callable[[str], None]
) -> dict[str, Any]:
    steps = args.steps if args.steps is not None else DEFAULT_STEPS[model]
    wl = build_workload(shape, model, root, args.batch_size, args.warmup, steps)
    p, c, r = wl.mean_lengths
    say(
        f"{shape}/{model}: {wl.n_rows} pairs, mean tokens prompt {p:.0f} chosen {c:.0f} "
        f"rejected {r:.0f}; batch {args.batch_size}, {args.warmup} warm-up + {steps} timed steps"
    )
    lr = args.lr if args.lr is not None else (1e-3 if args.lora else 1e-4)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TOOLS}
    for rnd in range(args.repeats):
        for tool in TOOLS:  # A B A B ...
            work = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=root))
            spec = ChildSpec(
                tool=tool,
                model_dir=wl.model_dir,
                data=wl.gpo_data if tool == "gpo" else wl.trl_data,
                n_rows=wl.n_rows,
                batch_size=args.batch_size,
                warmup=args.warmup,
                steps=steps,
                learning_rate=lr,
                lora=args.lora,
                work_dir=str(work),
                result=str(work / "result.json"),
                gpo_options=args.gpo_options,
                trl_reuse_host_memory=args.trl_reuse_host_memory,
            )
            t0 = time.perf_counter()
            out = run_child(spec, work / "log.txt")
            ends = out["step_ends"]
            span = ends[-1] - ends[args.warmup - 1]
            say(
                f"  round {rnd + 1} {tool}: {args.batch_size * steps / span:.3f} pairs/s, "
                f"{span / steps:.3f} s/step, peak RSS {out['peak_rss_mb']:.0f} MB "
                f"(process {time.perf_counter() - t0:.1f} s)"
            )
            runs[tool].append(out)
    stats = {t: _stats(runs[t], wl, args.batch_size, args.warmup, steps) for t in TOOLS}
    g, t = stats["gpo"], stats["trl"]
    if len(g.losses) != len(t.losses):
        raise RuntimeError(f"logged {len(g.losses)} gpo vs {len(t.losses)} TRL losses")
    return {
        "stats": stats,
        "workload": wl,
        "steps": steps,
        "lr": lr,
        "same_tokens": t.token_digest == wl.trl_digest,
        "loss_max_abs_diff": max(abs(a - b) for a, b in zip(g.losses, t.losses, strict=True)),
    }


def report(
    results: dict[str, dict[str, dict[str, Any]]],
    peak: float,
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> dict[str, dict[str, dict[str, float]]]:
    k = 6 if args.lora else 8
    out: dict[str, dict[str, dict[str, float]]] = {}
    say("")
    say(f"fp32 matmul peak (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s")
    say(f"gpo options: {args.gpo_options or 'defaults (prefix sharing on, no reference cache)'}")
    say(f"model FLOP/s = {k} x N_linear x tokens/s ({'LoRA' if args.lora else 'full fine-tuning'})")
    header = (
        f"{'tool':<5} {'pairs/s':>9} {'(min-max)':>17} {'s/step':>8} {'tokens/s':>9} "
        f"{'GFLOP/s':>8} {'% peak':>7} {'RSS MB':>7}"
    )
    for shape, by_model in results.items():
        out[shape] = {}
        for model, cell in by_model.items():
            stats: dict[str, ToolStats] = cell["stats"]
            n_linear = cell["workload"].linear_params
            say("")
            say(
                f"== {shape} / {model} (N_linear {n_linear / 1e6:.3g}M, lr {cell['lr']:g}, "
                f"beta {BETA}, batch {args.batch_size})"
            )
            say(header)
            med = {}
            for tool in TOOLS:
                s = stats[tool]
                med[tool] = statistics.median(s.pairs_per_s)
                tok = statistics.median(s.tokens_per_s)
                flops = k * n_linear * tok
                say(
                    f"{tool:<5} {med[tool]:>9.3f} "
                    f"{f'({min(s.pairs_per_s):.3f}-{max(s.pairs_per_s):.3f})':>17} "
                    f"{args.batch_size / med[tool]:>8.3f} {tok:>9.0f} {flops / 1e9:>8.2f} "
                    f"{100 * flops / peak:>6.1f}% {max(s.peak_rss_mb):>7.0f}"
                )
            g, t = stats["gpo"], stats["trl"]
            ratio = med["gpo"] / med["trl"]
            say(f"ratio gpo/TRL (pairs/s): {ratio:.2f}x")
            diff = cell["loss_max_abs_diff"]
            verdict = "same work" if diff <= LOSS_TOL and cell["same_tokens"] else "NOT THE SAME"
            say(
                f"same tokens: {'yes' if cell['same_tokens'] else 'NO'}; loss max |gpo - TRL| "
                f"over {len(g.losses)} steps: {diff:.2e} (tolerance {LOSS_TOL:g}): {verdict}"
            )
            first = min(5, len(g.losses))
            say("first losses gpo: " + " ".join(f"{x:.6f}" for x in g.losses[:first]))
            say("first losses TRL: " + " ".join(f"{x:.6f}" for x in t.losses[:first]))
            out[shape][model] = {
                "gpo_pairs_per_s": med["gpo"],
                "trl_pairs_per_s": med["trl"],
                "ratio": ratio,
                "gpo_peak_rss_mb": max(g.peak_rss_mb),
                "trl_peak_rss_mb": max(t.peak_rss_mb),
                "loss_max_abs_diff": cell["loss_max_abs_diff"],
            }
    return out


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
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per step")
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
    os.environ.update(CHILD_ENV)

    stream = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    import torch

    t0 = time.perf_counter()
    say(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    peak = matmul_peak_flops()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="gpo-vs-trl-") as tmp:
        for shape in args.shapes:
            results[shape] = {m: run_cell(shape, m, Path(tmp), args, say) for m in args.models}
    out = report(results, peak, args, say)
    say(f"\ntotal wall time {time.perf_counter() - t0:.1f} s")
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
