"""The fused AdamW (default) against torch's default AdamW: same updates up to rounding."""

import torch

from gpo.train.config import TrainConfig
from gpo.train.setup import make_optimizer


def test_fused_and_default_adamw_take_the_same_steps():
    torch.manual_seed(0)
    start = [torch.randn(37, 11), torch.randn(5)]
    results = {}
    for optim in ("adamw_fused", "adamw"):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        cfg = TrainConfig(optim=optim, learning_rate=1e-2, weight_decay=0.1)
        opt = make_optimizer(cfg, params)
        assert opt.defaults["fused"] is (True if optim == "adamw_fused" else None)
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        results[optim] = params
    for a, b, s in zip(results["adamw_fused"], results["adamw"], start, strict=True):
        assert (a - s).abs().max() > 1e-2  # they moved
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
