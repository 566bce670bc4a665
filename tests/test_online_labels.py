"""``--online-labels soft`` (issue 31): both orders of each judged pair, weighted by the judge's
probability, from one forward pass (gpo.train.labels)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import soft_judges
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from gpo.data.tokenize import TokenizedPair
from gpo.losses.family import PreferenceLoss
from gpo.losses.objectives import resolve_objective
from gpo.models.logps import SequenceLogps
from gpo.train.config import TrainConfig
from gpo.train.labels import HardLabels, SoftLabels, label_strategy
from gpo.train.online import ONLINE_PAIRS
from gpo.train.trainer import Trainer, train

FAST = {"online": True, "online_labels": "soft", "max_new_tokens": 6, "eval_steps": 0}
BETA = 0.7


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / ONLINE_PAIRS).read_text().splitlines()]


def _timeless(run: Path) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if "seconds" not in k} for m in lines]


@pytest.fixture(autouse=True)
def _fresh_calls():
    soft_judges.CALLS.clear()
    yield
    soft_judges.CALLS.clear()


def _batch(p: list[float]) -> tuple[list[TokenizedPair], SequenceLogps, SequenceLogps]:
    """Four pairs with their p_chosen; policy log-probs that need a gradient."""
    g = torch.Generator().manual_seed(0)
    n = len(p)
    pol = (torch.randn(2 * n, generator=g, dtype=torch.float64) - 4).requires_grad_()
    ref = torch.randn(2 * n, generator=g, dtype=torch.float64) - 4
    tokens, zeros = torch.full((2 * n,), 3), torch.zeros(2 * n)
    pairs = [TokenizedPair(k, [1], [2], [3], q) for k, q in enumerate(p)]
    return pairs, SequenceLogps(pol, tokens, zeros), SequenceLogps(ref, tokens, zeros)


@pytest.mark.parametrize(
    ("loss", "f"),
    [("logistic", lambda v: F.softplus(-v)), ("square", lambda v: (v - 1.0) ** 2)],
)
def test_the_soft_loss_is_both_orders_weighted_by_p(loss: str, f: Any) -> None:
    """Values and gradients against p * f(beta rho) + (1 - p) * f(-beta rho), by hand."""
    p = [0.9, 0.6, 0.75, 1.0]
    pairs, policy, ref = _batch(p)
    got, out = SoftLabels().loss(resolve_objective(loss), pairs, policy, ref, BETA)
    (grad,) = torch.autograd.grad(got, policy.logps)
    pc, pr = policy.logps.chunk(2)
    rc, rr = ref.logps.chunk(2)
    rho = (pc - rc) - (pr - rr)
    w = torch.tensor(p, dtype=torch.float64)
    want = (w * f(BETA * rho) + (1 - w) * f(-BETA * rho)).mean()
    (want_grad,) = torch.autograd.grad(want, policy.logps)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    assert torch.allclose(grad, want_grad, rtol=1e-12, atol=1e-15)
    assert torch.allclose(out.rho, rho) and out.losses.shape == (4,)
    assert not torch.allclose(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("loss", ["logistic", "square", "fdpo:js", "iupo:reverse_kl"])
def test_soft_with_p_1_is_the_hard_loss_with_first_as_chosen(loss: str) -> None:
    pairs, policy, ref = _batch([1.0] * 4)
    objective = resolve_objective(loss)
    soft, _ = SoftLabels().loss(objective, pairs, policy, ref, BETA)
    hard, _ = HardLabels().loss(objective, pairs, policy, ref, BETA)
    (g_soft,) = torch.autograd.grad(soft, policy.logps)
    (g_hard,) = torch.autograd.grad(hard, policy.logps)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-12)
    assert torch.allclose(g_soft, g_hard, rtol=1e-12, atol=1e-15)


def test_soft_labels_orient_to_the_more_likely_winner() -> None:
    assert SoftLabels().orient([0.3, 0.8, 0.5, 1.0, 0.0], 1) == [
        (False, 0.7),
        (True, 0.8),
        (True, 0.5),
        (True, 1.0),
        (False, 1.0),
    ]
    assert all(p is None for _, p in HardLabels().orient([0.3, 0.8], 1))


def test_soft_refuses_an_objective_without_per_pair_losses() -> None:
    class Averaged:
        name = "averaged"

        def __call__(self, pc, pr, rc, rr, beta, *, validate=True):
            rho = (pc - rc) - (pr - rr)
            return PreferenceLoss(F.softplus(-beta * rho).mean(), rho)

    with pytest.raises(ValueError, match=r"online_labels soft needs an objective with one loss"):
        label_strategy("soft", Averaged(), 0.1)
    assert label_strategy("hard", Averaged(), 0.1).name == "hard"
    _, policy, ref = _batch([0.5])
    hard_pair = [TokenizedPair(0, [1], [2], [3])]  # no p_chosen: a hard label
    with pytest.raises(ValueError, match=r"soft labels need each pair's p_chosen"):
        SoftLabels().loss(resolve_objective("logistic"), hard_pair, policy, ref, BETA)


def test_soft_needs_online() -> None:
    with pytest.raises(ValueError, match="online_labels soft needs online"):
        TrainConfig(online_labels="soft")
    assert TrainConfig(online=True, online_labels="soft").online_labels == "soft"


@pytest.mark.parametrize(
    "loss",
    [
        "logistic",
        "square",
        "hinge",
        "fdpo:js",
        "iupo:js",
        "fipo:alpha=0.3",
        "user_losses:smooth_hinge",
    ],
)
def test_every_objective_kind_trains_soft(tiny_config: Any, tmp_path: Path, loss: str) -> None:
    name = loss.replace(":", "-").replace("=", "")
    judge = "soft_judges:graded"
    summary = train(tiny_config(name, loss=loss, max_steps=2, online_judge=judge, **FAST))
    assert math.isfinite(summary["train"]["loss"])
    rows = _rows(tmp_path / name)
    assert [r["score"] for r in rows] == [0.9, 0.8, 0.65, 0.6] * 2


def test_soft_rows_keep_the_more_likely_one_as_chosen(
    tiny_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(tiny_config("run", max_steps=2, online_judge="soft_judges:three_tenths", **FAST))
    assert "online (judge soft_judges:three_tenths, soft labels)" in capsys.readouterr().out
    rows = _rows(tmp_path / "run")
    assert len(rows) == len(soft_judges.CALLS) == 8
    eos = AutoTokenizer.from_pretrained(tiny_config("x").model).eos_token
    for row, (_, first, second) in zip(rows, soft_judges.CALLS, strict=True):
        assert row["score"] == pytest.approx(0.7)  # P(chosen beats rejected)
        # (an empty finished completion is written as the EOS string: see pair_row)
        assert (row["chosen"], row["rejected"]) == (second or eos, first or eos)


def test_soft_resume_after_an_interruption_is_exact(tiny_config: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    kw = {**FAST, "max_steps": 4, "save_steps": 2, "save_final": True}
    kw["online_judge"] = "soft_judges:graded"

    class Killed(Exception):
        pass

    def kill_after_step_3(step: int, seconds: float) -> None:
        if step == 3:
            raise Killed

    train(tiny_config("whole", **kw))
    with pytest.raises(Killed):
        Trainer(tiny_config("cut", **kw), callbacks=[kill_after_step_3]).run()
    train(tiny_config("cut", resume=True, **kw))
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")
    assert _timeless(tmp_path / "cut") == _timeless(tmp_path / "whole")
    a = load_file(tmp_path / "whole" / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
