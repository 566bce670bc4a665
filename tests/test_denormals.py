"""`flush_denormals`: a saturated loss term hands the backward pass denormal gradients, which
make CPU math ~100x slower; the trainer flushes them to zero."""

from typing import Any

import pytest
import torch

from gpo.losses.divergences import iupo_loss
from gpo.train.denormals import denormals_flushed, flushing
from gpo.train.trainer import Trainer

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny  # 1.18e-38


def test_a_saturated_js_iupo_pair_has_denormal_gradients():
    # JS's f'(u) = log 2 + log sigmoid(log u): its slope sigmoid(-log u) is exp(-95) ~ 5e-42
    # for a pair the policy already separates by 95 nats (summed log-probs of long responses).
    pc = torch.tensor([-100.0], requires_grad=True)
    pr = torch.tensor([-195.0])
    iupo_loss(pc, pr, torch.tensor([-100.0]), torch.tensor([-101.0]), 0.2).losses.sum().backward()
    assert pc.grad is not None
    assert 0 < abs(pc.grad.item()) < SMALLEST_NORMAL


def test_flushing_turns_denormals_into_zeros_and_is_restored():
    x = torch.tensor([1e-40])
    assert not flushing()
    assert (x * 1.0).item() > 0
    with denormals_flushed():
        if not flushing():  # this CPU has no FTZ/DAZ: nothing to test
            return
        assert (x * 1.0).item() == 0.0
        assert (torch.tensor([1e-30]) * 1.0).item() > 0  # normal values are untouched
    assert not flushing()
    with denormals_flushed(enabled=False):
        assert not flushing()


@pytest.mark.parametrize("enabled", [True, False])
def test_a_run_trains_flushed_only_when_asked_and_restores(tiny_config, monkeypatch, enabled):
    seen: list[bool] = []
    micro_step = Trainer._micro_step

    def recording(self: Trainer, *args: Any) -> Any:
        seen.append(flushing())
        return micro_step(self, *args)

    monkeypatch.setattr(Trainer, "_micro_step", recording)
    cfg = tiny_config("run", max_steps=2, eval_steps=0, flush_denormals=enabled)
    Trainer(cfg).run()
    assert seen == [enabled, enabled]
    assert not flushing()  # process state as before the run (hypothesis, e.g., checks it)
