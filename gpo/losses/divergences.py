"""f-divergence generalizations of DPO and IPO (Sun et al. 2024, "UPO", §3-4).

Every loss here depends on the divergence only through ``f'`` of a probability ratio ``u``.
Ratios of whole sequences are ``exp`` of log-prob differences that can be hundreds of nats, so
each :class:`Divergence` evaluates ``f'(u)`` from ``log u`` directly and never forms ``u``.

- :func:`fdpo_loss`: f-DPO (Wang et al. 2023; UPO paper eq. 5), per-response ratios
  ``pi/pi_ref`` inside a logistic loss.
- :func:`iupo_loss`: IUPO exactly as UPO eq. 23-24 (Sun et al. 2024): ``f'`` of the *pair*
  ratios ``pi(y_w)/pi(y_l)`` and ``pi_ref(y_w)/pi_ref(y_l)`` inside the IPO square.
- :func:`fipo_loss`: the per-response variant, ``f'(pi/pi_ref)`` of each response inside the IPO
  square; the structure of TRL's ``loss_type="ipo"`` with an ``f_divergence_type`` (TRL 1.16 then
  divides each ``f'`` by the response's token count, which gpo does not).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gpo.losses.family import PreferenceLoss, log_ratio_difference
from gpo.losses.numerics import EXP_CAP, NonFiniteError, capped_exp, check_beta, check_logps

DEFAULT_ALPHA = 0.5


@dataclass(frozen=True)
class Divergence:
    """An f-divergence, known by its generator ``f`` and evaluated through ``f'(u)``."""

    name: str
    generator: str
    derivative: str
    f_prime_of_log: Callable[[Tensor], Tensor]

    def f_prime(self, log_u: Tensor) -> Tensor:
        """``f'(u)`` evaluated from ``log u`` (finite for finite input)."""
        return self.f_prime_of_log(log_u)


def _reverse_kl(log_u: Tensor) -> Tensor:
    # f(u) = u log u, f'(u) = log u + 1
    return log_u + 1.0


def _forward_kl(log_u: Tensor) -> Tensor:
    # f(u) = -log u, f'(u) = -1/u = -exp(-log u); capped for log u < -EXP_CAP (documented).
    return -capped_exp(-log_u, "forward_kl f'(u) = -exp(-log u)")


def _js(log_u: Tensor) -> Tensor:
    # f'(u) = log(2u / (1 + u)) = log 2 + log sigmoid(log u): bounded above by log 2, no clamp.
    return math.log(2.0) + F.logsigmoid(log_u)


def alpha_divergence(alpha: float = DEFAULT_ALPHA) -> Divergence:
    """The alpha-divergence with coefficient ``alpha`` (Wang et al. 2023, "Beyond reverse KL").

    Generator ``f(u) = (u^(1-a) - (1-a) u - a) / (a (a - 1))`` for ``0 < a < 1``, with
    ``f'(u) = (1 - u^(-a)) / a``. ``a -> 0`` approaches reverse KL and ``a -> 1`` forward KL.
    TRL 1.16 writes ``f'(t) = (t^(c-1) - 1)/(c-1)`` with ``c = f_alpha_divergence_coef``, so
    ``c = 1 - alpha``: both default to 0.5, where they agree; TRL's ``c = 1`` is reverse KL
    (``alpha -> 0`` here). Older TRL (0.x) used ``(1 - u^(-c))/c``, i.e. ``c = alpha``.
    ``alpha = 1`` gives ``f'(u) = 1 - 1/u``, forward KL's ``f'`` shifted by 1 (same f-DPO loss).
    ``u^(-a) = exp(-a log u)`` is capped for ``-a log u > EXP_CAP`` (documented in
    ``gpo.losses.numerics``), with a one-time warning.
    """
    a = float(alpha)
    if not (math.isfinite(a) and 0.0 < a <= 1.0):
        raise ValueError(f"alpha-divergence coefficient must be in (0, 1], got {alpha!r}")

    def f_prime(log_u: Tensor) -> Tensor:
        t = -a * log_u
        over = t > EXP_CAP
        expm1 = torch.where(
            over,
            capped_exp(t, "alpha f'(u) = (1 - u^-a)/a") - 1.0,
            torch.expm1(torch.clamp(t, max=EXP_CAP)),
        )
        return -expm1 / a

    return Divergence(
        f"alpha={a:g}" if a != DEFAULT_ALPHA else "alpha",
        "(u^(1-a) - (1-a) u - a) / (a (a - 1))",
        "(1 - u^(-a)) / a",
        f_prime,
    )


DIVERGENCES: dict[str, Divergence] = {
    d.name: d
    for d in (
        Divergence("reverse_kl", "u log u", "log u + 1", _reverse_kl),
        Divergence("forward_kl", "-log u", "-1/u", _forward_kl),
        Divergence("js", "u log u - (u + 1) log((u + 1) / 2)", "log(2u / (1 + u))", _js),
        alpha_divergence(DEFAULT_ALPHA),
    )
}


def resolve_divergence(divergence: str | Divergence, alpha: float | None = None) -> Divergence:
    """A :class:`Divergence` from a registered name (``alpha`` only for ``"alpha"``)."""
    if isinstance(divergence, Divergence):
        if alpha is not None:
            raise ValueError("alpha= is only used with divergence='alpha' given by name")
        return divergence
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"unknown divergence {divergence!r}: valid names are {', '.join(DIVERGENCES)}"
        )
    if alpha is not None:
        if divergence != "alpha":
            raise ValueError(f"alpha= is only used with divergence='alpha', not {divergence!r}")
        return alpha_divergence(alpha)
    return DIVERGENCES[divergence]


def _prepare(
    logps: tuple[Tensor, Tensor, Tensor, Tensor],
    beta: float,
    divergence: str | Divergence,
    alpha: float | None,
    validate: bool,
) -> tuple[float, Divergence, Tensor, Tensor, Tensor, Tensor]:
    """Validated ``beta``, divergence and the four log-prob tensors ``(pc, pr, rc, rr)``."""
    names = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")
    checked = check_logps(validate, **dict(zip(names, logps, strict=True)))
    return check_beta(beta), resolve_divergence(divergence, alpha), *checked  # type: ignore[return-value]


def _finite(losses: Tensor, family: str, div: Divergence, beta: float, validate: bool) -> Tensor:
    """The same check as :func:`gpo.losses.family.gpo_loss`: finite inputs that overflow in the
    loss raise, rather than returning ``inf`` (``validate=False``: the trainer's guard checks)."""
    if validate and not bool(torch.isfinite(losses).all()):
        raise NonFiniteError(
            f"loss '{family}:{div.name}' gave a non-finite value at beta={beta:g}; "
            "lower beta or check inputs"
        )
    return losses


def fdpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    divergence: str | Divergence = "reverse_kl",
    alpha: float | None = None,
    *,
    validate: bool = True,
) -> PreferenceLoss:
    """f-DPO (Wang et al. 2023; UPO paper eq. 5), per example:

    ``-log sigmoid(beta f'(pi(y_w)/pi_ref(y_w)) - beta f'(pi(y_l)/pi_ref(y_l)))``.

    With ``reverse_kl`` this is exactly DPO, i.e. GPO ``logistic``. Returns ``(losses, rho)``.
    """
    logps = (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    b, div, pc, pr, rc, rr = _prepare(logps, beta, divergence, alpha, validate)
    logits = div.f_prime(pc - rc) - div.f_prime(pr - rr)
    losses = _finite(F.softplus(-b * logits), "fdpo", div, b, validate)
    return PreferenceLoss(losses, log_ratio_difference(pc, pr, rc, rr))


def iupo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    divergence: str | Divergence = "js",
    alpha: float | None = None,
    *,
    validate: bool = True,
) -> PreferenceLoss:
    """IUPO (Sun et al. 2024, UPO eq. 23-24), per example:

    ``Uh = f'(pi(y_w)/pi(y_l)) - f'(pi_ref(y_w)/pi_ref(y_l))``, loss ``(Uh - 1/(2 beta))^2``.

    The ratios compare the two responses under one model, as the paper defines them. With
    ``reverse_kl`` this is exactly IPO ``(rho - 1/(2 beta))^2`` (UPO Prop. 4.1); ``js`` is the
    paper's JS-IUPO (eq. 26). Note that for JS ``Uh < -log sigmoid(log-ratio of pi_ref)``, so the
    target ``1/(2 beta)`` may be out of reach when the reference already prefers ``y_w``
    strongly. Returns ``(losses, rho)``.
    """
    logps = (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    b, div, pc, pr, rc, rr = _prepare(logps, beta, divergence, alpha, validate)
    uh = div.f_prime(pc - pr) - div.f_prime(rc - rr)
    losses = _finite((uh - 1.0 / (2.0 * b)) ** 2, "iupo", div, b, validate)
    return PreferenceLoss(losses, log_ratio_difference(pc, pr, rc, rr))


def fipo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    divergence: str | Divergence = "js",
    alpha: float | None = None,
    *,
    validate: bool = True,
) -> PreferenceLoss:
    """Per-response f-IPO: ``(f'(pi(y_w)/pi_ref(y_w)) - f'(pi(y_l)/pi_ref(y_l)) - 1/(2 beta))^2``.

    TRL 1.16's ``loss_type="ipo"`` with ``f_divergence_type`` has this structure but applies
    ``f'`` to the summed log-ratio and then divides by the response's token count. It differs
    from :func:`iupo_loss`, which takes ``f'`` of the ratio *between responses*
    (``pi(y_w)/pi(y_l)``); the two coincide only for reverse KL, where both reduce to IPO.
    Returns ``(losses, rho)``.
    """
    logps = (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    b, div, pc, pr, rc, rr = _prepare(logps, beta, divergence, alpha, validate)
    h = div.f_prime(pc - rc) - div.f_prime(pr - rr)
    losses = _finite((h - 1.0 / (2.0 * b)) ** 2, "fipo", div, b, validate)
    return PreferenceLoss(losses, log_ratio_difference(pc, pr, rc, rr))
