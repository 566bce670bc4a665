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
import hashlib
import json
import math
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

#: fixed shape -> (prompt tokens, tokens of each response including its EOS)
FIXED_SHAPES: dict[str, tuple[int, int]] = {"long_prompt": (400, 40), "short_prompt": (30, 200)}


@dataclasses.dataclass(frozen=True)
class LogNormal:
    """Token lengths ``round(exp(N(log median, sigma^2)))``, clipped to ``[low, high]``."""

    median: float
    sigma: float
    low: int
    high: int

    def draw(self, rng: random.Random) -> int:
        n = round(rng.lognormvariate(math.log(self.median), self.sigma))
        return min(self.high, max(self.low, n))

    def quantile(self, q: float) -> float:
        """The unclipped ``q`` quantile (for the docs: 0.05 and 0.95 give the 5-95% range)."""
        return self.median * math.exp(self.sigma * statistics.NormalDist().inv_cdf(q))


#: The ``variable`` shape: prompt and each response drawn independently (see the docstring for
#: where the parameters come from). Responses include their EOS.
VARIABLE = {"prompt": LogNormal(100, 1.1, 8, 1024), "response": LogNormal(150, 0.75, 4, 512)}
SHAPES = (*FIXED_SHAPES, "variable")
#: pairs per step unless --batch-size says otherwise
DEFAULT_BATCH = {"long_prompt": 2, "short_prompt": 2, "variable": 8}
PRECISIONS = ("fp32", "bf16")
MODELS = ("tiny", "smollm2")
TOOLS = ("gpo", "trl")
TRL_BEST = "trl_best"  # --trl-best: TRL with gpo's malloc setting, fused AdamW, padding_free
SEED = 0
BETA = 0.1
LOSS_TOL = 1e-4  # "same work": per-step losses of the two tools agree within this
#: default timed steps per model (a tiny step takes milliseconds, a SmolLM2 step seconds)
DEFAULT_STEPS = {"tiny": 30, "smollm2": 5}
QUICK = {"steps": 10, "warmup": 2, "repeats": 1}


def train_only() -> dict[str, Any]:
    """gpo options of a benchmarked run: every step logged; no evaluation, checkpoint, final
    save, tracker or progress bar."""
    return {
        "logging_steps": 1,
        "eval_steps": 0,
        "kl_prompts": 0,
        "gold_eval_prompts": 0,
        "save_steps": 0,
        "save_final": False,
        "report_to": ["none"],
        "progress": False,
    }


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
    batch_size: int  # pairs per optimizer step
    warmup: int
    steps: int
    learning_rate: float
    lora: bool
    work_dir: str
    result: str
    gpo_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    trl_reuse_host_memory: bool = False  # give TRL gpo's malloc setting (gpo.train.host_memory)
    trl_padding_free: bool = False  # ask TRL for padding_free (1.16 turns it off again)
    precision: str = "fp32"  # or "bf16": TRL bf16=True, gpo mixed_precision=bf16
    cross_entropy_head: bool = False  # gpo: torch's cross_entropy for the head (techniques.py)
    grad_accum: int = 1  # micro-batches of batch_size / grad_accum pairs per step, both tools


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


def _max_positions(path: str) -> int:
    """The model's ``max_position_embeddings``: gpo refuses a larger ``max_length``."""
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", 100_000))


def run_gpo_child(spec: ChildSpec) -> dict[str, Any]:
    from gpo.train.config import TrainConfig
    from gpo.train.tracking import read_metrics
    from gpo.train.trainer import Trainer

    class TimedTrainer(Trainer):
        """Records the end time of every optimiser step's last micro-step (the optimizer steps
        inside it); skips the final model save and plots, which TRL's run does not do either."""

        step_ends: list[float]

        def _micro_step(self, step: int, micro: int, indices: list[int]) -> Any:
            out = super()._micro_step(step, micro, indices)
            if (micro + 1) % spec.grad_accum == 0:
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
        max_length=_max_positions(spec.model_dir),  # no row is cut or dropped (checked)
        max_steps=spec.warmup + spec.steps,
        batch_size=spec.batch_size // spec.grad_accum,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.learning_rate,
        weight_decay=0.0,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        max_grad_norm=1.0,
        seed=SEED,
        out=str(Path(spec.work_dir) / "run"),
        **train_only(),
        ref_cache="none",  # TRL computes pi_ref every step; --gpo-option ref_cache=DIR to cache
        mixed_precision="bf16" if spec.precision == "bf16" else "no",
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
        "settings": {"optim": cfg.optim, "max_padding": getattr(cfg, "max_padding", None)},
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
        per_device_train_batch_size=spec.batch_size // spec.grad_accum,
        gradient_accumulation_steps=spec.grad_accum,
        max_steps=spec.warmup + spec.steps,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        loss_type=["sigmoid"],
        beta=BETA,
        max_length=None,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        bf16=spec.precision == "bf16",  # DPOConfig's default is True (autocast, on CPU too)
        fp16=False,
        padding_free=spec.trl_padding_free,
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
    optim = str(getattr(trainer.args.optim, "value", trainer.args.optim))
    if trainer.args.activation_checkpointing or trainer.args.bf16 != (spec.precision == "bf16"):
        raise RuntimeError("TRL config: checkpointing is on, or bf16 is not as asked")
    if optim != "adamw_torch_fused":
        raise RuntimeError(f"TRL's optimizer is {optim}, not its default adamw_torch_fused")
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
        "settings": {
            "optim": optim,
            "bf16": bool(trainer.args.bf16),
            "reuse_host_memory": spec.trl_reuse_host_memory,
            "padding_free_asked": spec.trl_padding_free,
            "padding_free_kept": bool(getattr(trainer, "padding_free", False)),
        },
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


def row_lengths(shape: str, n: int) -> list[tuple[int, int, int]]:
    """Target (prompt, chosen, rejected) token lengths of ``n`` rows (responses with EOS)."""
    if shape in FIXED_SHAPES:
        prompt, response = FIXED_SHAPES[shape]
        return [(prompt, response, response)] * n
    rng = random.Random(SEED + 1)  # its own stream: the words' stream stays as for fixed shapes
    p, r = VARIABLE["prompt"], VARIABLE["response"]
    return [(p.draw(rng), r.draw(rng), r.draw(rng)) for _ in range(n)]


def make_rows(tokenizer: Any, lengths: Sequence[tuple[int, int, int]]) -> list[dict[str, str]]:
    """Standard rows whose prompt and responses (+EOS) have about the ``lengths`` in tokens."""
    rng = random.Random(SEED)
    pool = _word_pool()

    def n_tokens(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    def response_tokens(text: str) -> int:
        return n_tokens(" " + text) + 1  # + the EOS both tools append

    rows = []
    for prompt_len, chosen_len, rejected_len in lengths:
        prompt = _fit_words(rng, pool, prompt_len, n_tokens)
        chosen = rejected = ""
        while chosen == rejected:
            chosen = _fit_words(rng, pool, chosen_len, response_tokens)
            rejected = _fit_words(rng, pool, rejected_len, response_tokens)
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
    length_range: tuple[tuple[int, int], tuple[int, int]]  # (min, max) of prompts, of responses
    padding_share: float  # of TRL-style padded batches (each row padded to the longest)
    trl_digest: str  # gpo's token ids in TRL's row order
    linear_params: int  # N in the FLOP estimate


def build_workload(
    shape: str, model: str, root: Path, batch: int, warmup: int, steps: int, accum: int = 1
) -> Workload:
    """Rows for ``warmup + steps`` steps of ``batch`` pairs; TRL pads each micro-batch of
    ``batch / accum`` pairs (gpo's micro-batches are consecutive slices of the same order)."""
    from transformers import AutoTokenizer

    from gpo.data import Limits, parse_rows, tokenize_rows
    from gpo.train.setup import micro_batches

    path = model_dir(model, root)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    n = batch * (warmup + steps)
    rows = make_rows(tokenizer, row_lengths(shape, n))
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
    prompts = [len(p.prompt_ids) for p in pairs]
    replies = [len(r) for p in pairs for r in (p.chosen_ids, p.rejected_ids)]
    spans = ((min(prompts), max(prompts)), (min(replies), max(replies)))
    micro = batch // accum
    padding = padding_share([in_order[i : i + micro] for i in range(0, n, micro)])
    return Workload(
        path,
        str(gpo_data),
        str(trl_data),
        n,
        tokens,
        lengths,
        spans,
        padding,
        digest,
        linear_params(path),
    )


def padding_share(batches: Sequence[Sequence[Any]]) -> float:
    """Share of padding in batches laid out as TRL 1.16's DPO collator does for text: the 2B rows
    prompt + response, right-padded to the longest row (``DataCollatorForPreference``)."""
    real = padded = 0
    for pairs in batches:
        width = max(
            len(p.prompt_ids) + len(r) for p in pairs for r in (p.chosen_ids, p.rejected_ids)
        )
        padded += 2 * len(pairs) * width
        real += sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    return 1 - real / padded


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


def run_script_child(
    script: str, spec: Any, spec_path: Path, log: Path, what: str
) -> dict[str, Any]:
    """Run ``script --child spec_path`` (``spec``, a dataclass with a ``result`` path, written
    there first) in a fresh process with :data:`CHILD_ENV`; its output goes to ``log``."""
    spec_path.write_text(json.dumps(dataclasses.asdict(spec)))
    env = {**os.environ, **CHILD_ENV}
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, str(Path(script).resolve()), "--child", str(spec_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(Path(spec.result).read_text())


def run_child(spec: ChildSpec, log: Path) -> dict[str, Any]:
    spec_path = Path(spec.work_dir) / "spec.json"
    return run_script_child(__file__, spec, spec_path, log, f"{spec.tool} child")


@dataclasses.dataclass
class ToolStats:
    pairs_per_s: list[float]
    tokens_per_s: list[float]
    peak_rss_mb: list[float]
    losses: list[float]  # first round
    token_digest: str | None
    settings: dict[str, Any]  # first round's record of what the tool ran with


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
        runs[0].get("settings", {}),
    )


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
    stats = {t: _stats(runs[t], wl, batch, args.warmup, steps) for t in tools}
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


def result_key(shape: str, precision: str, tool: str) -> str:
    """The JSON key: ``variable``, ``variable_bf16``, ``variable_trl_best``, ..."""
    key = shape if precision == "fp32" else f"{shape}_{precision}"
    return key if tool == "trl" else f"{key}_{tool}"


def _tool_line(name: str, s: ToolStats, batch: int, k: int, n_linear: int, peak: float) -> str:
    med = statistics.median(s.pairs_per_s)
    tok = statistics.median(s.tokens_per_s)
    flops = k * n_linear * tok
    return (
        f"{name:<8} {med:>9.3f} {f'({min(s.pairs_per_s):.3f}-{max(s.pairs_per_s):.3f})':>17} "
        f"{batch / med:>8.3f} {tok:>9.0f} {flops / 1e9:>8.2f} {100 * flops / peak:>6.1f}% "
        f"{max(s.peak_rss_mb):>7.0f}"
    )


def report(
    results: dict[tuple[str, str], dict[str, dict[str, Any]]],
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
        f"{'tool':<8} {'pairs/s':>9} {'(min-max)':>17} {'s/step':>8} {'tokens/s':>9} "
        f"{'GFLOP/s':>8} {'% peak':>7} {'RSS MB':>7}"
    )
    for (shape, precision), by_model in results.items():
        for model, cell in by_model.items():
            stats: dict[str, ToolStats] = cell["stats"]
            n_linear = cell["workload"].linear_params
            say("")
            say(
                f"== {shape} / {model} / {precision} (N_linear {n_linear / 1e6:.3g}M, "
                f"lr {cell['lr']:g}, beta {BETA}, batch {cell['batch']}, padding in TRL's "
                f"batches {100 * cell['workload'].padding_share:.0f}%)"
            )
            say(header)
            for tool, s in stats.items():
                say(_tool_line(tool, s, cell["batch"], k, n_linear, peak))
            g = stats["gpo"]
            say(f"gpo ran with {g.settings}")
            gpo_rate = statistics.median(g.pairs_per_s)
            for tool, diff in cell["loss_max_abs_diff"].items():
                t = stats[tool]
                trl_rate = statistics.median(t.pairs_per_s)
                same = cell["same_tokens"][tool]
                if precision != "fp32":
                    verdict = "bf16 on both sides: reported, not judged"
                elif diff <= LOSS_TOL and same:
                    verdict = "same work"
                else:
                    verdict = "NOT THE SAME"
                say(f"-- gpo vs {tool} ({t.settings})")
                say(f"ratio gpo/{tool} (pairs/s): {gpo_rate / trl_rate:.2f}x")
                say(
                    f"same tokens: {'yes' if same else 'NO'}; loss max |gpo - {tool}| over "
                    f"{len(g.losses)} steps: {diff:.2e} (tolerance {LOSS_TOL:g}): {verdict}"
                )
                first = min(5, len(g.losses))
                say("first losses gpo:  " + " ".join(f"{x:.6f}" for x in g.losses[:first]))
                say(f"first losses {tool}: " + " ".join(f"{x:.6f}" for x in t.losses[:first]))
                out.setdefault(result_key(shape, precision, tool), {})[model] = {
                    "gpo_pairs_per_s": gpo_rate,
                    "trl_pairs_per_s": trl_rate,
                    "ratio": gpo_rate / trl_rate,
                    "gpo_peak_rss_mb": max(g.peak_rss_mb),
                    "trl_peak_rss_mb": max(t.peak_rss_mb),
                    "loss_max_abs_diff": diff,
                }
        if precision != "fp32" and (shape, "fp32") in results:
            for model, cell in by_model.items():
                fp32 = results[(shape, "fp32")].get(model)
                if fp32 is not None:
                    rate = statistics.median(cell["stats"]["gpo"].pairs_per_s)
                    base = statistics.median(fp32["stats"]["gpo"].pairs_per_s)
                    say(f"{shape}/{model}: gpo {precision} / gpo fp32 = {rate / base:.2f}x")
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
