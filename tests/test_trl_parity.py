"""Parity with TRL's ``DPOTrainer`` (TRL 1.x, a dev dependency): same rows, same tokens, same loss.

Each test trains TRL's ``DPOTrainer`` (explicit ``ref_model``) for one step on a tiny local Llama
saved to disk, with one batch holding every row, and reads the step-1 log: its loss and metrics
are computed on the initial weights, before the update. gpo runs the same rows through
``parse_rows -> tokenize_rows -> collate_pairs -> sequence_logps (policy, Reference) ->
objective -> reduce_metrics(pair_values(...))`` on copies loaded from the same folders.

- The token ids gpo builds must equal TRL's ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids``
  row by row: that is what makes "the same batch" true.
- The reference is the policy with noise added to its LM head, not an exact copy: with equal
  weights every log-ratio is 0, so rewards, margins and accuracies would be 0 on both sides and
  the losses their value at 0, and the comparison would prove little. The LM head is also scaled
  up so the model is far from uniform. ``_assert_informative`` checks the batch is informative
  (accuracy strictly between 0 and 1, non-zero mean rewards and margins, every ``|rho| > 0``).
- Everything is float32 on both sides. TRL's ``DPOConfig`` defaults to ``bf16=True`` (autocast,
  on CPU too, applied to the prepared reference model), so ``bf16=False`` is set. float64 would
  not help: TRL's fused LM head accumulates log-probs in float32 whatever the weights' dtype, and
  its alpha-divergence branch has no float64 case. float32 agrees within ``TOL`` (the largest
  gap, ~8e-6, is ``logps/*``: float32 rounding of sums of magnitude ~50).
- ``logits/*`` are defined alike (token-weighted mean over completion tokens of the vocab-mean
  logit) and are compared too.

TRL -> gpo mapping checked here:
- ``sigmoid`` = ``logistic``, ``hinge`` = ``hinge`` (same beta, summed log-probs): loss and all
  metrics (``rewards/*``, ``logps/*``, ``logits/*``).
- ``ipo`` with ``beta = tau``: TRL scores per-token MEAN log-ratios. gpo ``iupo:reverse_kl`` at
  ``beta = tau`` with ``logp_reduction="mean"`` gives the same loss exactly; gpo ``square`` at
  ``beta_g = 2 tau`` with mean reduction gives ``beta_g^2`` times it (the README's IPO
  mapping). TRL's IPO metrics stay sum-based (``rewards = tau * summed log-ratio``, ``logps/*``
  summed), whereas gpo's metrics follow ``logp_reduction``; so the metrics are compared
  against gpo's sum-reduction pass at ``beta = tau``, and gpo's mean-reduction per-pair rewards
  times the token counts are checked to rebuild TRL's sum-based rewards.
- f-divergences with ``sigmoid``: ``js_divergence`` = ``fdpo:js``, ``forward_kl`` =
  ``fdpo:forward_kl`` (TRL's ``f' = 1 - 1/u`` is gpo's ``-1/u`` shifted by 1, which cancels), and
  ``alpha_divergence`` with ``f_alpha_divergence_coef = c`` = ``fdpo:alpha=1-c``.
  TRL's ``rewards/*`` are ``beta * log-ratio`` for every divergence, as gpo's are.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

datasets = pytest.importorskip("datasets")
pytest.importorskip("trl")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from gpo.data import Limits, TokenizedPair, collate_pairs, parse_rows, tokenize_rows  # noqa: E402
from gpo.eval.pairs import pair_values, reduce_metrics  # noqa: E402
from gpo.losses.objectives import resolve_objective  # noqa: E402
from gpo.models.logps import Reduction, SequenceLogps, sequence_logps  # noqa: E402
from gpo.models.reference import Reference  # noqa: E402
from gpo.models.tiny import tiny_model_and_tokenizer  # noqa: E402

TOL = 1e-5

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"  # raised inside TRL
)
HEAD_SCALE = 15.0  # sharpen the random LM head (init std 0.02) so the model is far from uniform
REF_NOISE = 0.1  # the reference = the policy with LM-head noise: sequence log-ratios of ~0.3-3 nats
REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
LOGP_KEYS = ("logps/chosen", "logps/rejected")
LOGIT_KEYS = ("logits/chosen", "logits/rejected")
ALL_KEYS = ("loss", *REWARD_KEYS, *LOGP_KEYS, *LOGIT_KEYS)

# Standard format over the tiny vocabulary: varied prompt/response lengths, a response that
# already ends with the EOS string (neither side may add a second one), an out-of-vocabulary word
# (-> <unk>), and a pair whose responses share a long prefix.
STANDARD_ROWS: list[dict[str, Any]] = [
    {
        "prompt": "tell me a fact about the sun .",
        "chosen": " the sun is very big .",
        "rejected": " the sun is small",
    },
    {
        "prompt": "write a sentence about cats",
        "chosen": " cats like water .",
        "rejected": " i love my dog and my cat , and we run in the garden with the dogs .",
    },
    {"prompt": "hello", "chosen": " hello ! how are you ?", "rejected": " no<eos>"},
    {
        "prompt": "give me a tip about coffee , please",
        "chosen": " make it slow and drink it with bread",
        "rejected": " make it fast and zebra",
    },
    {
        "prompt": "describe the sky at night in one short sentence about the moon and the stars",
        "chosen": " the moon is happy .",
        "rejected": " the moon is blue and the sky is green and red .",
    },
    {"prompt": "why is the sea blue ?", "chosen": " it is the sky .", "rejected": " yes"},
]

CONVERSATIONAL_ROWS: list[dict[str, Any]] = [
    {
        "prompt": [{"role": "user", "content": "tell me a fact about the moon ."}],
        "chosen": [{"role": "assistant", "content": "it is a cat"}],
        "rejected": [{"role": "assistant", "content": "the moon is small and old ."}],
    },
    {
        "prompt": [
            {"role": "system", "content": "you are a good tree ."},
            {"role": "user", "content": "what do you like ?"},
        ],
        "chosen": [{"role": "assistant", "content": "i like the sun and the rain ."}],
        "rejected": [{"role": "assistant", "content": "no"}],
    },
    {
        "prompt": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hello ! how are you ?"},
            {"role": "user", "content": "give me a song about the sea"},
        ],
        "chosen": [{"role": "assistant", "content": "the sea is blue , the sea is long"}],
        "rejected": [{"role": "assistant", "content": "write it yourself , please"}],
    },
    {
        "prompt": [{"role": "user", "content": "why do birds eat bread ?"}],
        "chosen": [{"role": "assistant", "content": "they like it ."}],
        "rejected": [{"role": "assistant", "content": "the city is big and the house is new ."}],
    },
]


@dataclass(frozen=True)
class Checkpoints:
    policy_dir: Path
    ref_dir: Path
    policy: nn.Module  # gpo's own copies, loaded from the same dirs (TRL patches its models)
    ref: nn.Module
    tokenizer: Any


@dataclass
class TRLStep:
    metrics: dict[str, float]  # "loss" plus TRL's logged metrics for the step
    tokenized: Any  # TRL's prepared dataset (prompt_ids / chosen_ids / rejected_ids columns)


@dataclass
class GPOStep:
    metrics: dict[str, float]
    values: dict[str, torch.Tensor]  # per-pair values from pair_values
    pairs: list[TokenizedPair]


def _load(path: Path) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matmuls: one intra-op thread avoids contention on a busy machine (3-4x faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    root = tmp_path_factory.mktemp("trl_parity")
    policy, tokenizer = tiny_model_and_tokenizer(seed=0)
    ref = copy.deepcopy(policy)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        policy.lm_head.weight.mul_(HEAD_SCALE)
        ref.lm_head.weight.mul_(HEAD_SCALE)
        head = ref.lm_head.weight
        head.add_(REF_NOISE * torch.randn(head.shape, generator=noise, dtype=head.dtype))
    dirs = []
    for name, model in (("policy", policy), ("ref", ref)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        dirs.append(root / name)
    policy_dir, ref_dir = dirs
    return Checkpoints(
        policy_dir,
        ref_dir,
        _load(policy_dir).eval(),
        _load(ref_dir).eval(),
        AutoTokenizer.from_pretrained(policy_dir),
    )


@pytest.fixture(scope="module")
def trl_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trl_out")


def run_trl(ckpt: Checkpoints, rows: list[dict[str, Any]], out_dir: Path, **config: Any) -> TRLStep:
    """TRL's loss and logged metrics for the single batch holding all ``rows``."""
    args = DPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=len(rows),
        max_steps=1,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_dropout=True,
        bf16=False,  # DPOConfig defaults to bf16 autocast, on CPU too; compare in float32
        activation_checkpointing=False,
        logging_steps=1,
        **config,
    )
    trainer = DPOTrainer(
        model=_load(ckpt.policy_dir),
        ref_model=_load(ckpt.ref_dir),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(ckpt.policy_dir),
    )
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 1 and batches[0]["input_ids"].shape[0] == 2 * len(rows)
    trainer.train()  # one step; its logged loss and metrics are computed before the update
    logged = [entry for entry in trainer.state.log_history if "rewards/chosen" in entry]
    assert len(logged) == 1
    metrics = {k: float(v) for k, v in logged[0].items() if isinstance(v, int | float)}
    return TRLStep(metrics, trainer.train_dataset)


def run_gpo(
    ckpt: Checkpoints,
    rows: list[dict[str, Any]],
    objective: str,
    beta: float,
    reduction: Reduction = "sum",
) -> GPOStep:
    parsed = parse_rows(rows, "parity")
    pairs, report = tokenize_rows(parsed, ckpt.tokenizer, Limits(max_length=4096), "parity")
    assert report.kept == len(rows)
    batch = collate_pairs(pairs, ckpt.tokenizer.pad_token_id)
    with torch.no_grad():
        policy: SequenceLogps = sequence_logps(ckpt.policy, batch, reduction)
    ref = Reference(ckpt.policy, frozen=ckpt.ref).logps(batch, reduction)
    out = resolve_objective(objective)(*policy.split(), *ref.split(), beta)
    values = pair_values(out, policy, ref, beta)
    return GPOStep(reduce_metrics(values), values, pairs)


def assert_same_tokens(pairs: list[TokenizedPair], tokenized: Any) -> None:
    assert len(pairs) == len(tokenized)
    for pair, row in zip(pairs, tokenized, strict=True):
        assert pair.prompt_ids == row["prompt_ids"], f"row {pair.index}: prompt ids differ"
        assert pair.chosen_ids == row["chosen_ids"], f"row {pair.index}: chosen ids differ"
        assert pair.rejected_ids == row["rejected_ids"], f"row {pair.index}: rejected ids differ"


def max_diffs(
    ours: dict[str, float], theirs: dict[str, float], keys: tuple[str, ...]
) -> dict[str, float]:
    missing = [k for k in keys if k not in theirs]
    assert not missing, f"TRL did not log {missing}"
    return {k: abs(ours[k] - theirs[k]) for k in keys}


def assert_close(
    ours: dict[str, float], theirs: dict[str, float], keys: tuple[str, ...] = ALL_KEYS
) -> None:
    diffs = max_diffs(ours, theirs, keys)
    bad = {k: (ours[k], theirs[k]) for k, d in diffs.items() if not d <= TOL}
    assert not bad, f"gpo vs TRL beyond {TOL}: {bad}"


def _assert_informative(trl: TRLStep, gpo: GPOStep) -> None:
    """The batch must separate policy from reference, or the comparison would be empty."""
    assert 0.0 < trl.metrics["rewards/accuracies"] < 1.0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(trl.metrics[key]) > 1e-2, key
    assert bool((gpo.values["rho"].abs() > 1e-2).all())


# --- sigmoid / hinge -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trl_loss", "gpo_objective", "beta"), [("sigmoid", "logistic", 0.5), ("hinge", "hinge", 0.5)]
)
def test_standard_loss_and_metrics_match(
    checkpoints: Checkpoints, trl_out: Path, trl_loss: str, gpo_objective: str, beta: float
) -> None:
    theirs = run_trl(checkpoints, STANDARD_ROWS, trl_out, loss_type=[trl_loss], beta=beta)
    ours = run_gpo(checkpoints, STANDARD_ROWS, gpo_objective, beta)
    assert_same_tokens(ours.pairs, theirs.tokenized)
    _assert_informative(theirs, ours)
    if trl_loss == "hinge":  # both sides of the kink are exercised
        v = beta * ours.values["rho"]
        assert bool((v > 1).any()) and bool((v < 1).any())
    else:
        assert abs(theirs.metrics["loss"] - math.log(2)) > 1e-2
    assert_close(ours.metrics, theirs.metrics)


def test_conversational_logistic_matches(checkpoints: Checkpoints, trl_out: Path) -> None:
    beta = 0.5
    theirs = run_trl(checkpoints, CONVERSATIONAL_ROWS, trl_out, loss_type=["sigmoid"], beta=beta)
    ours = run_gpo(checkpoints, CONVERSATIONAL_ROWS, "logistic", beta)
    assert_same_tokens(ours.pairs, theirs.tokenized)
    # the chat template was applied: each rendered prompt ends with the generation prompt
    gen_prompt = checkpoints.tokenizer("<bos>assistant :")["input_ids"]
    for pair in ours.pairs:
        assert pair.prompt_ids[-len(gen_prompt) :] == gen_prompt
        assert pair.chosen_ids[-1] == checkpoints.tokenizer.eos_token_id
    _assert_informative(theirs, ours)
    assert_close(ours.metrics, theirs.metrics)


# --- ipo (per-token mean log-probs) ----------------------------------------------------------


@pytest.fixture(scope="module")
def trl_ipo(checkpoints: Checkpoints, trl_out: Path) -> tuple[float, TRLStep]:
    tau = 0.1
    return tau, run_trl(checkpoints, STANDARD_ROWS, trl_out, loss_type=["ipo"], beta=tau)


def test_ipo_equals_iupo_reverse_kl_with_mean_logps(
    checkpoints: Checkpoints, trl_ipo: tuple[float, TRLStep]
) -> None:
    tau, theirs = trl_ipo
    ours = run_gpo(checkpoints, STANDARD_ROWS, "iupo:reverse_kl", tau, reduction="mean")
    summed = run_gpo(checkpoints, STANDARD_ROWS, "iupo:reverse_kl", tau, reduction="sum")
    assert_same_tokens(ours.pairs, theirs.tokenized)
    _assert_informative(theirs, summed)
    assert abs(ours.metrics["loss"] - theirs.metrics["loss"]) <= TOL
    # the mean reduction matters: with summed log-probs the IPO loss is a different number
    assert abs(summed.metrics["loss"] - theirs.metrics["loss"]) > 1e-2

    # TRL's IPO metrics are sum-based with beta = tau: gpo's sum pass at beta = tau reproduces them
    assert_close(summed.metrics, theirs.metrics, (*REWARD_KEYS, *LOGP_KEYS, *LOGIT_KEYS))
    # gpo's own (mean-reduction) per-pair rewards are per-token: times the token counts they
    # rebuild TRL's sum-based rewards
    for side in ("chosen", "rejected"):
        rebuilt = ours.values[f"reward_{side}"] * ours.values[f"tokens_{side}"]
        assert abs(rebuilt.mean().item() - theirs.metrics[f"rewards/{side}"]) <= TOL


def test_ipo_equals_square_with_beta_mapping(
    checkpoints: Checkpoints, trl_ipo: tuple[float, TRLStep]
) -> None:
    """The README's IPO mapping: ``square`` at ``beta_g`` is ``beta_g^2 (rho - 1/beta_g)^2``,
    i.e. ``beta_g^2`` times IPO at ``tau = beta_g / 2``."""
    tau, theirs = trl_ipo
    beta_g = 2 * tau
    ours = run_gpo(checkpoints, STANDARD_ROWS, "square", beta_g, reduction="mean")
    assert_same_tokens(ours.pairs, theirs.tokenized)
    assert abs(ours.metrics["loss"] / beta_g**2 - theirs.metrics["loss"]) <= TOL
    # same rho as TRL's per-token ipo_delta: rewards at gpo's beta_g, rescaled to tau and to sums
    for side in ("chosen", "rejected"):
        rebuilt = ours.values[f"reward_{side}"] * ours.values[f"tokens_{side}"] * (tau / beta_g)
        assert abs(rebuilt.mean().item() - theirs.metrics[f"rewards/{side}"]) <= TOL
    # the beta mapping matters: square at beta_g = tau is not IPO at tau
    wrong = run_gpo(checkpoints, STANDARD_ROWS, "square", tau, reduction="mean")
    assert abs(wrong.metrics["loss"] / tau**2 - theirs.metrics["loss"]) > 1e-2


# --- f-divergences (TRL: sigmoid with f_divergence_type) -------------------------------------


@pytest.mark.parametrize(
    ("trl_config", "gpo_objective"),
    [
        ({"f_divergence_type": "js_divergence"}, "fdpo:js"),
        ({"f_divergence_type": "forward_kl"}, "fdpo:forward_kl"),
        (
            {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
            "fdpo:alpha=0.7",
        ),
    ],
    ids=["js", "forward_kl", "alpha_c0.3"],
)
def test_f_divergence_sigmoid_matches_fdpo(
    checkpoints: Checkpoints, trl_out: Path, trl_config: dict[str, Any], gpo_objective: str
) -> None:
    beta = 0.5
    theirs = run_trl(
        checkpoints, STANDARD_ROWS, trl_out, loss_type=["sigmoid"], beta=beta, **trl_config
    )
    ours = run_gpo(checkpoints, STANDARD_ROWS, gpo_objective, beta)
    assert_same_tokens(ours.pairs, theirs.tokenized)
    _assert_informative(theirs, ours)
    assert_close(ours.metrics, theirs.metrics)
    # the divergence matters: plain DPO on the same batch gives another loss
    dpo = run_gpo(checkpoints, STANDARD_ROWS, "logistic", beta)
    assert abs(dpo.metrics["loss"] - theirs.metrics["loss"]) > 1e-3
    if "f_alpha_divergence_coef" in trl_config:  # and so does the c -> 1 - c mapping
        c = trl_config["f_alpha_divergence_coef"]
        unmapped = run_gpo(checkpoints, STANDARD_ROWS, f"fdpo:alpha={c}", beta)
        assert abs(unmapped.metrics["loss"] - theirs.metrics["loss"]) > 1e-3
