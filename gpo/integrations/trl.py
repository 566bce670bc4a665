"""Every gpo objective inside TRL's ``DPOTrainer``: a one-line change for TRL scripts.

>>> from gpo.integrations.trl import GPODPOTrainer
>>> trainer = GPODPOTrainer(objective="savage", model=..., ref_model=..., args=DPOConfig(beta=0.1))

Everything but the loss is TRL's: data preparation, the reference (``ref_model``, PEFT adapters
disabled, ``precompute_ref_log_probs``), Accelerate/DeepSpeed, checkpoints and its metrics. The
loss is ``mean(objective(pc, pr, rc, rr, beta))`` on TRL's own summed sequence log-probs, with
the objective resolved by :func:`gpo.losses.objectives.resolve_objective` (any name that
``gpo train --loss`` takes, a ``pkg.module:func`` or a callable ``f(v)``). The logs gain gpo's
``rho/mean``, ``rho/std`` and ``mu_sq_loss = mean(rho^2)/2``.

How: TRL 1.16 computes the loss inline in ``DPOTrainer._compute_loss``, so this subclass calls it
unchanged (for the metrics) with two interceptions, no copied code: the policy model is wrapped
to record its forward outputs (TRL's fused LM head returns per-token ``log_probs``), and the
reference log-probs are computed first by TRL's own ``compute_ref_log_probs`` and handed to
``_compute_loss`` as if precomputed (one reference forward, as in TRL). TRL's loss is then
replaced by gpo's on the same log-probs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import torch
from torch import Tensor

from gpo.losses.objectives import TRL_HINTS, Objective, resolve_objective
from gpo.models.loading import old_checkpointing_names_quiet

#: TRL versions this module is written against: the fused LM head (``outputs.log_probs``) and
#: ``compute_ref_log_probs`` it relies on are not in TRL 1.9 and older. Tested with 1.16.0.
SUPPORTED_TRL = (1, 16), (2, 0)
SUPPORTED_TRL_TEXT = "trl>=1.16,<2"


def check_trl_version(found: str | None) -> None:
    """Raise a one-line ``ImportError`` unless ``found`` (TRL's version) is supported."""
    if found is None:
        raise ImportError(
            f"gpo.integrations.trl needs TRL ({SUPPORTED_TRL_TEXT}): pip install 'gpo[trl]'"
        )
    from packaging.version import InvalidVersion, Version

    try:
        release = Version(found).release
    except InvalidVersion:
        release = ()
    low, high = SUPPORTED_TRL
    if not (low <= tuple(release[:2]) < high):
        raise ImportError(
            f"gpo.integrations.trl supports {SUPPORTED_TRL_TEXT} (tested with 1.16.0), "
            f"found trl {found}: pip install 'gpo[trl]'"
        )


def _installed_trl() -> str | None:
    try:
        return version("trl")
    except PackageNotFoundError:
        return None


check_trl_version(_installed_trl())  # before importing TRL: an old TRL fails with this line

from trl import DPOConfig, DPOTrainer  # noqa: E402

Reduction = Literal["sum", "mean"]
#: What to pass instead of a TRL loss_type (TRL_HINTS covers the rest).
TRL_LOSS_TYPES = {
    "sigmoid": "objective='logistic' (the default)",
    "hinge": "objective='hinge'",
    "ipo": "objective='iupo:reverse_kl', logp_reduction='mean' at beta = TRL's beta (tau)",
}
#: TRL's f_divergence_type -> the gpo objective with TRL's sigmoid loss (the coefficient of
#: alpha_divergence, c, is gpo's alpha = 1 - c; see docs/trl.md).
TRL_F_DIVERGENCES = {"js_divergence": "fdpo:js", "forward_kl": "fdpo:forward_kl"}


def trl_hint(args: DPOConfig) -> str | None:
    """Why ``args`` conflicts with ``objective=`` and what to write instead, or ``None``."""
    loss_types = list(args.loss_type)
    if loss_types != ["sigmoid"] or args.loss_weights not in (None, [1.0]):
        hints = [
            f"{t}: {TRL_LOSS_TYPES.get(t) or TRL_HINTS.get(t, 'not in gpo')}" for t in loss_types
        ]
        return (
            f"objective= replaces DPOConfig.loss_type (got {loss_types}); leave it at the "
            f"default ({'; '.join(hints)})"
        )
    div = args.f_divergence_type
    if div != "reverse_kl":
        gpo_name = TRL_F_DIVERGENCES.get(div, f"fdpo:alpha={1 - args.f_alpha_divergence_coef:g}")
        return (
            f"objective= replaces DPOConfig.f_divergence_type (got {div!r}); leave it at "
            f"'reverse_kl' and pass objective={gpo_name!r}"
        )
    if args.ld_alpha is not None or args.use_weighting:
        return "ld_alpha and use_weighting change TRL's log-probs or loss; unset them"
    return None


class _Recorder:
    """The policy model, recording the outputs of its first forward call."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.outputs: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.model(*args, **kwargs)
        if self.outputs is None:
            self.outputs = out
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


class GPODPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` with the loss of a gpo objective (beta: ``DPOConfig.beta``).

    ``objective``: a gpo objective name (``"savage"``, ``"iupo:js"``, ``"fdpo:alpha=0.3"``...),
    ``"pkg.module:func"``, a callable ``f(v)`` or an :class:`~gpo.losses.objectives.Objective`.
    ``logp_reduction="mean"`` scores per-token mean log-probs (what TRL's ``ipo`` uses) instead
    of sums. Every other argument is ``DPOTrainer``'s. ``DPOConfig.loss_type`` and
    ``f_divergence_type`` must stay at their defaults: the objective replaces them.
    """

    def __init__(
        self,
        *args: Any,
        objective: str | Objective | Callable[[Tensor], Tensor] = "logistic",
        logp_reduction: Reduction = "sum",
        **kwargs: Any,
    ) -> None:
        self.objective = resolve_objective(objective)  # fail fast, before any model loads
        if logp_reduction not in ("sum", "mean"):
            raise ValueError(f"logp_reduction must be 'sum' or 'mean', got {logp_reduction!r}")
        self.logp_reduction = logp_reduction
        args_ = kwargs.get("args", args[2] if len(args) > 2 else None)
        if args_ is not None and (hint := trl_hint(args_)):
            raise ValueError(f"GPODPOTrainer: {hint}")
        super().__init__(*args, **kwargs)

    @contextlib.contextmanager
    def _ref_from_inputs(self) -> Iterator[None]:
        """TRL reads the reference log-probs from the batch while this is active."""
        before = self.precompute_ref_logps
        self.precompute_ref_logps = True
        try:
            yield
        finally:
            self.precompute_ref_logps = before

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        if not self.precompute_ref_logps:  # one reference forward, by TRL's own method
            with old_checkpointing_names_quiet():  # TRL toggles checkpointing by the old names
                rc, rr = self.compute_ref_log_probs(self.ref_model or self.model, inputs)
            inputs = {**inputs, "ref_chosen_logps": rc, "ref_rejected_logps": rr}
        recorder = _Recorder(model)
        with self._ref_from_inputs():  # TRL's metrics, from the same forward passes
            result = super()._compute_loss(recorder, inputs, return_outputs)
        outputs = recorder.outputs
        mask = inputs["completion_mask"][..., 1:]  # the positions TRL's log_probs align with
        logps = outputs.log_probs[:, -mask.size(1) :].sum(dim=1)
        ref = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(logps)
        if self.logp_reduction == "mean":
            tokens = mask.sum(dim=1).clamp(min=1).to(logps.dtype)
            logps, ref = logps / tokens, ref / tokens
        out = self.objective(*logps.chunk(2), *ref.chunk(2), self.beta, validate=False)
        loss = out.losses.mean()
        if self.aux_loss_enabled:  # MoE router loss, as TRL adds it
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        self._log_rho(out.rho.detach())
        return (loss, result[1]) if return_outputs else loss

    def _log_rho(self, rho: Tensor) -> None:
        """gpo's rho metrics over the global batch, next to TRL's (averaged per log like them)."""
        mode = "train" if self.model.training else "eval"
        rho = self.accelerator.gather(rho.float())
        metrics = self._metrics[mode]
        metrics["rho/mean"].append(rho.mean().item())
        metrics["rho/std"].append(rho.std().item() if rho.numel() > 1 else 0.0)
        metrics["mu_sq_loss"].append((rho.pow(2).mean() / 2).item())
