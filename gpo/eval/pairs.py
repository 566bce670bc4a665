"""Offline pair metrics: TRL-named preference metrics plus the paper's offline regularizer
(the mu-weighted squared loss), for training batches and held-out pairs.

Per-example values are gathered across processes first, then reduced, so every process count
logs the same numbers for the same global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from gpo.data.collate import collate_for_training
from gpo.data.tokenize import TokenizedPair
from gpo.losses.family import PreferenceLoss
from gpo.losses.objectives import Objective
from gpo.models.logps import Reduction, SequenceLogps, batch_logps
from gpo.models.reference import Reference


def pair_values(
    out: PreferenceLoss,
    policy: SequenceLogps,
    ref: SequenceLogps,
    beta: float,
    reduction: Reduction = "sum",
) -> dict[str, Tensor]:
    """Per-pair tensors ``[B]`` (detached) from which :func:`reduce_metrics` computes the logs.

    ``logratio_*``: each response's sequence log-ratio log pi_theta(y|x) - log pi_ref(y|x)
    (summed over its tokens whatever ``reduction`` the objective uses)."""
    pc, pr = policy.split()
    rc, rr = ref.split()
    tok_c, tok_r = policy.tokens.chunk(2)
    lg_c, lg_r = policy.logits_sum.chunk(2)
    ratio_c, ratio_r = (pc - rc).detach(), (pr - rr).detach()
    if reduction == "mean":  # back to sums: the per-token means are sums / max(tokens, 1)
        ratio_c, ratio_r = ratio_c * tok_c.clamp(min=1), ratio_r * tok_r.clamp(min=1)
    return {
        "logratio_chosen": ratio_c,
        "logratio_rejected": ratio_r,
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


@torch.no_grad()
def pair_metrics(
    policy: nn.Module,
    reference: Reference,
    objective: Objective,
    pairs: Sequence[TokenizedPair],
    beta: float,
    reduction: Reduction,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    gather: Callable[[dict[str, Tensor]], dict[str, Tensor]] = lambda v: v,
    share_prompt: bool = True,
) -> dict[str, float]:
    """Offline metrics on ``pairs`` (this process's shard), with TRL's names."""
    was_training = policy.training
    policy.eval()
    chunks = []
    for k in range(0, len(pairs), batch_size):
        chunk = list(pairs[k : k + batch_size])
        batch = collate_for_training(chunk, pad_id, share_prompt).to(device)
        pol = batch_logps(policy, batch, reduction)
        ref = reference.logps(batch, reduction)
        out = objective(*pol.split(), *ref.split(), beta)
        chunks.append(pair_values(out, pol, ref, beta, reduction))
    policy.train(was_training)
    return reduce_metrics(gather(concat_values(chunks)))
