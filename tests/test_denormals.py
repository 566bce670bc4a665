"""`flush_denormals`: a saturated loss term hands the backward pass denormal gradients, which
make CPU math ~100x slower; the trainer flushes them to zero."""

import torch

from gpo.losses.divergences import iupo_loss
from gpo.train.trainer import Trainer

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny  # 1.18e-38


def test_a_saturated_js_iupo_pair_has_denormal_gradients():
    # JS's f'(u) = log 2 + log sigmoid(log u): its slope sigmoid(-log u) is exp(-95) ~ 5e-42
    # for a pair the policy already separates by 95 nats (summed log-probs of long responses).
    torch.set_flush_denormal(False)  # trainers built by earlier tests switch it on
    pc = torch.tensor([-100.0], requires_grad=True)
    pr = torch.tensor([-195.0])
    iupo_loss(pc, pr, torch.tensor([-100.0]), torch.tensor([-101.0]), 0.2).losses.sum().backward()
    assert pc.grad is not None
    assert 0 < abs(pc.grad.item()) < SMALLEST_NORMAL


def test_flushing_turns_denormals_into_zeros():
    x = torch.tensor([1e-40])
    torch.set_flush_denormal(False)
    try:
        assert (x * 1.0).item() > 0
        if not torch.set_flush_denormal(True):  # this CPU has no FTZ/DAZ: nothing to test
            return
        assert (x * 1.0).item() == 0.0
        assert (torch.tensor([1e-30]) * 1.0).item() > 0  # normal values are untouched
    finally:
        torch.set_flush_denormal(False)


def test_trainer_flushes_only_when_asked(tiny_config, monkeypatch):
    calls: list[bool] = []
    monkeypatch.setattr(torch, "set_flush_denormal", lambda on: calls.append(on) or True)
    Trainer(tiny_config("on", max_steps=1))
    Trainer(tiny_config("off", max_steps=1, flush_denormals=False))
    assert calls == [True]
