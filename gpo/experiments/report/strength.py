"""Beta vs the measured KL per loss, and the GPO paper's strength translation checked against it.

A beta does not carry over between setups: rho is a log-ratio summed over a completion's tokens,
so its scale grows with completion length and with how far training moves the policy. The KL
from pi_ref that a run ends at does carry over. Per loss, this section gives the final KL (mean
over seeds) at each beta and the beta that reaches given KLs in this sweep, interpolated in
log-log between neighbouring betas where the KL falls as beta grows.

Across losses, GPO (Tang et al. 2024, §4.1) predicts equal regularization at
``s_a * beta_a = s_b * beta_b`` with ``s = |f''(0)/f'(0)|`` (:func:`gpo.equivalent_beta`). The
``ratios`` compare that prediction, ``beta_loss / beta_logistic = s_logistic / s_loss``, with the
ratio of the betas at which the two losses reach the same KL here.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from typing import Any

from gpo.experiments.report.collect import finite
from gpo.experiments.report.markdown import _f

#: KLs (nats) at which the betas of different losses are compared.
KL_TARGETS = (2.0, 5.0)

#: The loss every other loss's beta is expressed against (DPO).
ANCHOR = "logistic"


def _strength(loss: str) -> float | None:
    from gpo.losses.analysis import analyze

    try:
        s = analyze(loss).strength
    except (ValueError, ImportError):  # e.g. a user loss that cannot be imported here
        return None
    return s if 0 < s < math.inf else None


def kl_by_beta(rows: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per loss, (beta, final KL averaged over seeds), by beta; fixed-beta runs only."""
    values: dict[tuple[str, float], list[float]] = defaultdict(list)
    for r in rows:
        kl = r["final"].get("kl")
        if r.get("kl_target") is None and finite(kl):
            values[r["loss"], r["beta"]].append(float(kl))
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (loss, beta), kls in sorted(values.items()):
        out[loss].append((beta, statistics.fmean(kls)))
    return dict(out)


def beta_at_kl(points: list[tuple[float, float]], kl: float) -> float | None:
    """The beta at which the KL crosses ``kl`` going down, log-log between two neighbouring
    betas; None when no neighbouring pair brackets it (or a KL is <= 0)."""
    for (b1, k1), (b2, k2) in itertools.pairwise(points):
        if min(k1, k2) <= 0 or not k1 >= kl >= k2 or k1 == k2:
            continue
        t = (math.log(k1) - math.log(kl)) / (math.log(k1) - math.log(k2))
        return math.exp(math.log(b1) + t * (math.log(b2) - math.log(b1)))
    return None


def strength_section(
    rows: list[dict[str, Any]], targets: tuple[float, ...] = KL_TARGETS
) -> dict[str, Any]:
    """``summary.json``'s ``strength`` entry; empty when no loss has two betas."""
    curves = {loss: pts for loss, pts in kl_by_beta(rows).items() if len(pts) >= 2}
    if not curves:
        return {}
    losses = {
        loss: {
            "strength": _strength(loss),
            "final_kl_by_beta": {f"{b:g}": k for b, k in pts},
            "beta_at_kl": {f"{t:g}": beta_at_kl(pts, t) for t in targets},
        }
        for loss, pts in curves.items()
    }
    ratios = []
    anchor = losses.get(ANCHOR)
    for loss, e in losses.items():
        if anchor is None or loss == ANCHOR or None in (e["strength"], anchor["strength"]):
            continue
        for t in targets:
            mine, theirs = e["beta_at_kl"][f"{t:g}"], anchor["beta_at_kl"][f"{t:g}"]
            ratios.append(
                {
                    "loss": loss,
                    "kl": t,
                    "predicted": anchor["strength"] / e["strength"],
                    "measured": mine / theirs if mine and theirs else None,
                }
            )
    return {"kl_targets": list(targets), "anchor": ANCHOR, "losses": losses, "ratios": ratios}


def strength_markdown(section: dict[str, Any]) -> str:
    """report.md's beta-vs-KL and strength-ratio tables (empty without two betas of a loss)."""
    if not section:
        return ""
    targets = [f"{t:g}" for t in section["kl_targets"]]
    betas = sorted({float(b) for e in section["losses"].values() for b in e["final_kl_by_beta"]})
    lines = [
        "",
        "## Beta vs KL: final KL (nats, mean over seeds) per beta, and the beta reaching a KL",
        "",
        "| loss | s = abs(f''(0)/f'(0)) | "
        + " | ".join(f"KL at beta {b:g}" for b in betas)
        + " | "
        + " | ".join(f"beta for KL {t}" for t in targets)
        + " |",
        "|---" * (2 + len(betas) + len(targets)) + "|",
    ]
    for loss, e in section["losses"].items():
        kls = [_f(e["final_kl_by_beta"].get(f"{b:g}")) for b in betas]
        at = [_f(e["beta_at_kl"][t]) for t in targets]
        lines.append(f"| {loss} | {_f(e['strength'])} | " + " | ".join(kls + at) + " |")
    if section["ratios"]:
        a = section["anchor"]
        lines += [
            "",
            f"beta_loss / beta_{a} at equal KL: predicted s_{a} / s_loss (gpo.equivalent_beta) "
            "vs measured here:",
            "",
            "| loss | KL | predicted | measured |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['loss']} | {r['kl']:g} | {_f(r['predicted'])} | {_f(r['measured'])} |"
            for r in section["ratios"]
        ]
    return "\n".join(lines) + "\n"
