"""TRL-named preference metrics plus the paper's offline regularizer.

Per-example values are gathered across processes first, then reduced, so every process count
logs the same numbers for the same global batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpo.logps import SequenceLogps
from gpo.losses import PreferenceLoss


def pair_values(
    out: PreferenceLoss, policy: SequenceLogps, ref: SequenceLogps, beta: float
) -> dict[str, Tensor]:
    """Per-pair tensors ``[B]`` (detached) from which :func:`reduce_metrics` computes the logs."""
    pc, pr = policy.split()
    rc, rr = ref.split()
    tok_c, tok_r = policy.tokens.chunk(2)
    lg_c, lg_r = policy.logits_sum.chunk(2)
    return {
        "loss": out.losses.detach(),
        "reward_chosen": beta * (pc - rc).detach(),
        "reward_rejected": beta * (pr - rr).detach(),
        "logps_chosen": pc.detach(),
        "logps_rejected": pr.detach(),
        "rho": out.rho.detach(),
        "logits_sum_chosen": lg_c,
        "logits_sum_rejected": lg_r,
        "tokens_chosen": tok_c.to(pc.dtype),
        "tokens_rejected": tok_r.to(pc.dtype),
    }


def reduce_metrics(v: dict[str, Tensor]) -> dict[str, float]:
    """Batch means under TRL's names; ``mu_sq_loss`` is ``mean(rho^2)/2`` (GPO paper eq. 6)."""
    rc, rj, rho = v["reward_chosen"], v["reward_rejected"], v["rho"]
    return {
        "loss": v["loss"].mean().item(),
        "rewards/chosen": rc.mean().item(),
        "rewards/rejected": rj.mean().item(),
        "rewards/accuracies": (rc > rj).float().mean().item(),
        "rewards/margins": (rc - rj).mean().item(),
        "logps/chosen": v["logps_chosen"].mean().item(),
        "logps/rejected": v["logps_rejected"].mean().item(),
        "logits/chosen": (v["logits_sum_chosen"].sum() / v["tokens_chosen"].sum()).item(),
        "logits/rejected": (v["logits_sum_rejected"].sum() / v["tokens_rejected"].sum()).item(),
        "rho/mean": rho.mean().item(),
        "rho/std": rho.std().item() if rho.numel() > 1 else 0.0,
        "mu_sq_loss": (rho.pow(2).mean() / 2).item(),
    }


def concat_values(chunks: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
