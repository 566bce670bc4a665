"""Label strategies: how a judged pair becomes labels, and how the objective becomes the loss of
a micro-step (``online_labels``, docs/online.md). Chosen once at set-up (:func:`label_strategy`);
the trainer calls :meth:`Labels.loss` and never branches on the strategy, nor on the objective.

- :class:`HardLabels` (``hard``, and every offline run): the winner is drawn with the judge's
  probability; the loss is the mean of the objective's per-pair losses.
- :class:`SoftLabels` (``soft``): no draw. For a pair with p = P(first beats second) the loss is
  ``p * l(first > second) + (1 - p) * l(second > first)``, ``l`` the objective on one ordered
  pair. The pair is stored with ``chosen`` = the judge's more likely one and
  ``p_chosen`` = its probability (>= 0.5), which is the same sum. Both orders are the same two
  sequences: the log-probs are computed once, and the objective evaluated twice on them with
  chosen and rejected swapped (no second forward pass).

Every objective ``--loss`` accepts is a function of the four sequence log-probs of one ordered
pair with one loss per pair (the six GPO losses, ``fdpo`` / ``iupo`` / ``fipo``, and a
``pkg.module:func`` GPO loss, whose per-example shape :func:`gpo.losses.family.gpo_loss`
enforces), so each takes ``soft``. An objective that does not give one loss per pair (possible
only through the Python API) is refused at set-up by :meth:`SoftLabels.check`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from gpo.data.tokenize import TokenizedPair
from gpo.losses.family import PreferenceLoss
from gpo.losses.objectives import Objective
from gpo.models.logps import SequenceLogps
from gpo.train.online import first_wins


class Labels(Protocol):
    name: str

    def orient(self, scores: list[float], seed: int) -> list[tuple[bool, float | None]]:
        """Per judged pair: whether ``first`` is the chosen one, and ``p_chosen`` for the pair
        (``None``: a hard label). ``seed``: the micro-step's label stream."""
        ...

    def loss(
        self,
        objective: Objective,
        pairs: Sequence[TokenizedPair],
        policy: SequenceLogps,
        ref: SequenceLogps,
        beta: float,
    ) -> tuple[Tensor, PreferenceLoss]:
        """The micro-step's loss to back-propagate, and the per-pair losses and rho to log."""
        ...

    def check(self, objective: Objective, beta: float) -> None:
        """Refuse an objective this strategy cannot train with (one line)."""
        ...


class HardLabels:
    """A drawn winner (online) or the data's label (offline); the mean of per-pair losses."""

    name = "hard"

    def orient(self, scores: list[float], seed: int) -> list[tuple[bool, float | None]]:
        return [(wins, None) for wins in first_wins(scores, seed)]

    def loss(
        self,
        objective: Objective,
        pairs: Sequence[TokenizedPair],
        policy: SequenceLogps,
        ref: SequenceLogps,
        beta: float,
    ) -> tuple[Tensor, PreferenceLoss]:
        # No per-call validation (host syncs): a non-finite loss propagates to the trainer's
        # guard, which checks once per step and names the rows.
        out = objective(*policy.split(), *ref.split(), beta, validate=False)
        return out.losses.mean(), out

    def check(self, objective: Objective, beta: float) -> None:
        return None


class SoftLabels:
    """Both orders, weighted by the judge's probability (see the module docstring)."""

    name = "soft"

    def orient(self, scores: list[float], seed: int) -> list[tuple[bool, float | None]]:
        return [(s >= 0.5, max(s, 1.0 - s)) for s in scores]

    def loss(
        self,
        objective: Objective,
        pairs: Sequence[TokenizedPair],
        policy: SequenceLogps,
        ref: SequenceLogps,
        beta: float,
    ) -> tuple[Tensor, PreferenceLoss]:
        (pc, pr), (rc, rr) = policy.split(), ref.split()
        ahead = objective(pc, pr, rc, rr, beta, validate=False)
        behind = objective(pr, pc, rr, rc, beta, validate=False)  # the same log-probs, swapped
        losses = ahead.losses
        p = torch.tensor(soft_weights(pairs), dtype=losses.dtype, device=losses.device)
        mixed = p * losses + (1.0 - p) * behind.losses
        return mixed.mean(), PreferenceLoss(mixed, ahead.rho)

    def check(self, objective: Objective, beta: float) -> None:
        """Probe the objective on two pairs: it must return one loss per pair."""
        logps = torch.tensor([[-3.0, -5.0], [-4.0, -2.5], [-3.5, -4.0], [-4.5, -3.0]])
        out = objective(*logps, beta, validate=False)
        shape = tuple(getattr(out.losses, "shape", ()))
        if shape != (2,):
            raise ValueError(
                f"config: online_labels soft needs an objective with one loss per ordered pair, "
                f"and {objective.name!r} returned losses of shape {shape} for 2 pairs: use "
                "online_labels hard"
            )


def soft_weights(pairs: Sequence[TokenizedPair]) -> list[float]:
    """Each pair's ``p_chosen``; a pair without one (a hard label) cannot train soft."""
    weights = [p.p_chosen for p in pairs]
    if any(w is None for w in weights):
        raise ValueError("soft labels need each pair's p_chosen: only online pairs carry one")
    return weights  # type: ignore[return-value]


#: ``online_labels`` -> its strategy.
LABELS: dict[str, Labels] = {"hard": HardLabels(), "soft": SoftLabels()}


def label_strategy(name: str, objective: Objective, beta: float) -> Labels:
    """The run's label strategy, checked against its objective (before any model loads)."""
    labels = LABELS[name]
    labels.check(objective, beta)
    return labels
