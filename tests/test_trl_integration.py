"""``gpo.integrations.trl.GPODPOTrainer`` against TRL itself (the version the test extra installs).

On one batch of a tiny Llama (policy and a reference with LM-head noise, so every rho is
non-zero, as in tests/test_trl_parity.py):
- the subclass's loss equals gpo's own pipeline (gpo tokenization, ``sequence_logps``,
  ``Reference``, the objective) for every objective in the registry, plus ``family:alpha=A``
  and a user ``pkg.module:func``; Savage and the rho metrics are also checked by hand;
- it equals TRL's built-in ``sigmoid``, ``hinge``, ``ipo`` and f-divergence ``sigmoid`` where
  they coincide (same beta; IPO: ``iupo:reverse_kl`` at beta = tau with per-token mean
  log-probs, or ``square`` at beta = 2 tau divided by beta^2), with TRL's own metrics unchanged;
- a few training steps run end to end (explicit reference, PEFT without one, precomputed
  reference log-probs) and log gpo's ``rho/*`` and ``mu_sq_loss``;
- TRL settings the objective replaces are refused with the mapping, and an unsupported TRL
  version fails at import with one line.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

datasets = pytest.importorskip("datasets")
pytest.importorskip("trl")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from gpo.data import Limits, collate_pairs, parse_rows, tokenize_rows  # noqa: E402
from gpo.integrations.trl import GPODPOTrainer, check_trl_version  # noqa: E402
from gpo.losses.objectives import OBJECTIVES, resolve_objective  # noqa: E402
from gpo.models.logps import sequence_logps  # noqa: E402
from gpo.models.reference import Reference  # noqa: E402
from gpo.models.tiny import tiny_model_and_tokenizer  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"  # raised inside TRL
)
TOL = 1e-5
BETA = 0.5
ROOT = Path(__file__).resolve().parent.parent
ROWS: list[dict[str, Any]] = [
    {"prompt": "tell me a fact about the sun .", "chosen": " the sun is big .", "rejected": " no"},
    {"prompt": "write about cats", "chosen": " cats like water .", "rejected": " i love my dog ."},
    {"prompt": "hello", "chosen": " hello ! how are you ?", "rejected": " the moon is red"},
    {"prompt": "why is the sea blue ?", "chosen": " it is the sky .", "rejected": " yes"},
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: contention costs more than it gains
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Policy and reference folders: the reference is the policy with LM-head noise."""
    root = tmp_path_factory.mktemp("trl_integration")
    policy, tokenizer = tiny_model_and_tokenizer(seed=0)
    ref = copy.deepcopy(policy)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        policy.lm_head.weight.mul_(15.0)  # far from uniform
        ref.lm_head.weight.mul_(15.0)
        ref.lm_head.weight.add_(0.1 * torch.randn(ref.lm_head.weight.shape, generator=noise))
    for name, model in (("policy", policy), ("ref", ref)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "policy", root / "ref"


def _load(path: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _config(out: Path, **kw: Any) -> DPOConfig:
    base: dict[str, Any] = dict(
        output_dir=str(out),
        per_device_train_batch_size=len(ROWS),
        max_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,  # DPOConfig's default is bf16 autocast, on CPU too
        activation_checkpointing=False,
        logging_steps=1,
        beta=BETA,
    )
    return DPOConfig(**{**base, **kw})


TRAINER_KW = ("objective", "logp_reduction", "peft_config", "eval_dataset")


def _trainer(cls: type, dirs: tuple[Path, Path], out: Path, data: Any = None, **kw: Any) -> Any:
    trainer_kw = {k: kw.pop(k) for k in TRAINER_KW if k in kw}
    return cls(
        model=_load(dirs[0]),
        ref_model=None if "peft_config" in trainer_kw else _load(dirs[1]),
        args=_config(out, **kw),
        train_dataset=data if data is not None else datasets.Dataset.from_list(ROWS),
        processing_class=AutoTokenizer.from_pretrained(dirs[0]),
        **trainer_kw,
    )


def _loss_on_batch(trainer: Any) -> float:
    """The trainer's loss on its one batch (all of ROWS), without training."""
    (batch,) = list(trainer.get_train_dataloader())
    trainer.model.train()  # as in a training step (from_pretrained leaves eval mode on)
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch)))


@pytest.fixture(scope="module")
def tokenized(dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """TRL's prepared dataset, reused so each trainer below skips tokenization."""
    return _trainer(DPOTrainer, dirs, tmp_path_factory.mktemp("tok")).train_dataset


@pytest.fixture(scope="module")
def gpo_logps(dirs: tuple[Path, Path]) -> dict[str, tuple[torch.Tensor, ...]]:
    """gpo's own four log-prob tensors for ROWS, by reduction (independent of TRL's code)."""
    tokenizer = AutoTokenizer.from_pretrained(dirs[0])
    pairs, report = tokenize_rows(parse_rows(ROWS, "t"), tokenizer, Limits(), "t")
    assert report.kept == len(ROWS)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    policy, ref = _load(dirs[0]).eval(), _load(dirs[1]).eval()
    out = {}
    for reduction in ("sum", "mean"):
        with torch.no_grad():
            pol = sequence_logps(policy, batch, reduction)  # type: ignore[arg-type]
        r = Reference(policy, frozen=ref).logps(batch, reduction)  # type: ignore[arg-type]
        out[reduction] = (*pol.split(), *r.split())
    rho = (out["sum"][0] - out["sum"][2]) - (out["sum"][1] - out["sum"][3])
    assert bool((rho.abs() > 1e-2).all()), "an uninformative batch proves little"
    return out


ALL_OBJECTIVES = [*OBJECTIVES, "fdpo:alpha=0.3", "iupo:alpha=0.7", "user_losses:smooth_hinge"]


@pytest.mark.parametrize("objective", ALL_OBJECTIVES)
def test_loss_equals_gpo_objective_on_the_same_batch(
    objective: str, dirs: tuple[Path, Path], tokenized: Any, gpo_logps: Any, tmp_path: Path
) -> None:
    trainer = _trainer(GPODPOTrainer, dirs, tmp_path, tokenized, objective=objective)
    ours = _loss_on_batch(trainer)
    expected = resolve_objective(objective)(*gpo_logps["sum"], BETA).losses.mean().item()
    assert math.isfinite(ours)
    assert abs(ours - expected) <= TOL * max(1.0, abs(expected)), (ours, expected)


def test_savage_and_rho_metrics_by_hand(
    dirs: tuple[Path, Path], tokenized: Any, gpo_logps: Any, tmp_path: Path
) -> None:
    """Savage f(v) = 1/(1 + e^v)^2 and the rho metrics, computed here from gpo's log-probs."""
    trainer = _trainer(GPODPOTrainer, dirs, tmp_path, tokenized, objective="savage")
    ours = _loss_on_batch(trainer)
    pc, pr, rc, rr = (t.tolist() for t in gpo_logps["sum"])
    rho = [(a - c) - (b - d) for a, b, c, d in zip(pc, pr, rc, rr, strict=True)]
    savage = sum(1 / (1 + math.exp(BETA * r)) ** 2 for r in rho) / len(rho)
    assert abs(ours - savage) <= TOL
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    mean = sum(rho) / len(rho)
    std = math.sqrt(sum((r - mean) ** 2 for r in rho) / (len(rho) - 1))
    assert abs(logged["rho/mean"] - mean) <= TOL
    assert abs(logged["rho/std"] - std) <= TOL
    assert abs(logged["mu_sq_loss"] - sum(r * r for r in rho) / len(rho) / 2) <= TOL
    assert abs(logged["rewards/margins"] - BETA * mean) <= TOL  # TRL's metrics are still there


TAU = 0.1
COINCIDING = [  # (TRL config, gpo objective, its beta, logp reduction, TRL loss = ours / factor)
    ({"loss_type": ["sigmoid"]}, "logistic", BETA, "sum", 1.0),
    ({"loss_type": ["hinge"]}, "hinge", BETA, "sum", 1.0),
    ({"loss_type": ["ipo"], "beta": TAU}, "iupo:reverse_kl", TAU, "mean", 1.0),
    ({"loss_type": ["ipo"], "beta": TAU}, "square", 2 * TAU, "mean", (2 * TAU) ** 2),
    ({"f_divergence_type": "js_divergence"}, "fdpo:js", BETA, "sum", 1.0),
    ({"f_divergence_type": "forward_kl"}, "fdpo:forward_kl", BETA, "sum", 1.0),
    (
        {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
        "fdpo:alpha=0.7",
        BETA,
        "sum",
        1.0,
    ),
]


@pytest.mark.parametrize(
    ("trl_config", "objective", "beta", "reduction", "factor"),
    COINCIDING,
    ids=["sigmoid", "hinge", "ipo_iupo", "ipo_square", "js", "forward_kl", "alpha_c0.3"],
)
def test_loss_equals_trl_builtin_where_they_coincide(
    trl_config: dict[str, Any],
    objective: str,
    beta: float,
    reduction: str,
    factor: float,
    dirs: tuple[Path, Path],
    tokenized: Any,
    tmp_path: Path,
) -> None:
    theirs_trainer = _trainer(DPOTrainer, dirs, tmp_path, tokenized, **trl_config)
    theirs = _loss_on_batch(theirs_trainer)
    ours_trainer = _trainer(
        GPODPOTrainer,
        dirs,
        tmp_path,
        tokenized,
        objective=objective,
        logp_reduction=reduction,
        beta=beta,
    )
    ours = _loss_on_batch(ours_trainer)
    assert abs(ours / factor - theirs) <= TOL, (ours, theirs)
    if factor != 1.0 or reduction == "mean":  # the mappings matter: without them, other numbers
        plain = _trainer(GPODPOTrainer, dirs, tmp_path, tokenized, objective=objective, beta=beta)
        assert abs(_loss_on_batch(plain) / factor - theirs) > 1e-3
    # TRL's own metrics come from TRL's code on the same forward passes: identical at equal beta
    if beta == theirs_trainer.beta:
        mine, trls = ours_trainer._metrics["train"], theirs_trainer._metrics["train"]
        for key in ("rewards/chosen", "rewards/margins", "logps/chosen", "logits/rejected"):
            assert abs(mine[key][-1] - trls[key][-1]) <= TOL, key


def _logged(trainer: Any, key: str) -> list[float]:
    return [e[key] for e in trainer.state.log_history if key in e]


def test_training_runs_with_an_explicit_reference(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    trainer = _trainer(
        GPODPOTrainer, dirs, tmp_path, objective="savage", max_steps=3, learning_rate=1e-2
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    losses = _logged(trainer, "loss")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]  # the same batch three times: the loss goes down
    assert len(_logged(trainer, "rho/mean")) == 3 and len(_logged(trainer, "mu_sq_loss")) == 3
    assert any(
        not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True)
    )


def test_training_with_peft_and_evaluation(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    """LoRA with no ref_model (the reference is the base, adapters off) and an eval set."""
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = _trainer(
        GPODPOTrainer,
        dirs,
        tmp_path,
        objective="iupo:js",
        peft_config=lora,
        max_steps=2,
        learning_rate=1e-2,
        eval_strategy="steps",
        eval_steps=2,
        eval_dataset=datasets.Dataset.from_list(ROWS),
    )
    trainer.train()
    assert len(_logged(trainer, "loss")) == 2
    # adapters start at zero: at step 1 the policy is the reference, rho = 0 exactly
    assert _logged(trainer, "rho/mean")[0] == 0.0
    assert _logged(trainer, "mu_sq_loss")[-1] > 0.0  # and then moves away from it
    assert math.isfinite(_logged(trainer, "eval_rho/mean")[0])
    assert math.isfinite(_logged(trainer, "eval_mu_sq_loss")[0])


def test_precomputed_reference_gives_the_same_loss(
    dirs: tuple[Path, Path], tokenized: Any, tmp_path: Path
) -> None:
    live = _loss_on_batch(_trainer(GPODPOTrainer, dirs, tmp_path, tokenized, objective="savage"))
    trainer = _trainer(
        GPODPOTrainer,
        dirs,
        tmp_path,
        datasets.Dataset.from_list(ROWS),
        objective="savage",
        precompute_ref_log_probs=True,
        max_steps=2,
    )
    assert "ref_chosen_logps" in trainer.train_dataset.column_names
    assert abs(_loss_on_batch(trainer) - live) <= TOL
    trainer.train()
    assert len(_logged(trainer, "rho/mean")) == 2


@pytest.mark.parametrize(
    ("trl_config", "hint"),
    [
        ({"loss_type": ["ipo"]}, "objective='iupo:reverse_kl', logp_reduction='mean'"),
        ({"loss_type": ["robust"]}, "not in gpo"),
        ({"f_divergence_type": "js_divergence"}, "objective='fdpo:js'"),
        (
            {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
            "objective='fdpo:alpha=0.7'",
        ),
        ({"ld_alpha": 0.5}, "ld_alpha"),
    ],
)
def test_settings_the_objective_replaces_are_refused(
    trl_config: dict[str, Any], hint: str, dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="GPODPOTrainer: ") as err:
        _trainer(GPODPOTrainer, dirs, tmp_path, objective="savage", **trl_config)
    assert hint in str(err.value) and "\n" not in str(err.value)


def test_unknown_objective_fails_before_loading() -> None:
    with pytest.raises(ValueError, match="unknown loss 'savag'"):
        GPODPOTrainer(model="no/such-model", objective="savag")


def test_version_check_is_one_line() -> None:
    check_trl_version("1.16.0")
    check_trl_version("1.99.1.dev0")
    for bad in ("0.29.0", "1.9.0", "2.0.0", "garbage"):
        with pytest.raises(ImportError, match=r"supports trl>=1\.16,<2") as err:
            check_trl_version(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ImportError, match=r"needs TRL \(trl>=1\.16,<2\): pip install 'gpo\[trl\]'"):
        check_trl_version(None)


def _python(code: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path or ""), str(ROOT)]))}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


def test_old_trl_fails_at_import_and_gpo_never_imports_trl(tmp_path: Path) -> None:
    """A TRL 0.9 found first on the path (its metadata only) stops the import with one line;
    ``import gpo`` and ``gpo.integrations`` load no TRL."""
    dist = tmp_path / "trl-0.9.6.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: trl\nVersion: 0.9.6\n")
    old = _python("import gpo.integrations.trl", tmp_path)
    assert old.returncode == 1
    last = old.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: gpo.integrations.trl supports trl>=1.16,<2"), last
    assert "found trl 0.9.6" in last
    clean = _python("import sys, gpo, gpo.integrations; print('trl' in sys.modules)")
    assert clean.returncode == 0 and clean.stdout.strip() == "False", clean.stderr
