"""Seed-to-seed spread: runs that differ only in ``seed`` grouped per (loss, beta).

A claim read off one seed can be noise: on SmolLM2 LoRA two seeds of the same run ended at gold
win rates 0.74 and 0.89. Each group reports every seed's value, the mean and the spread
(max - min) of the final win rate, final KL, median KL, 90th-percentile win rate and the
per-run Spearman(KL, mu-sq); per beta, the mean over losses of both.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from gpo.experiments.report.collect import finite

#: metric name -> how to read it from a run row of :func:`gpo.experiments.report.collect.run_rows`
METRICS: dict[str, Any] = {
    "final_win_rate": lambda r: r["final"].get("win_rate"),
    "final_kl": lambda r: r["final"].get("kl"),
    "median_kl": lambda r: r["median_kl"],
    "peak_win_rate_p90": lambda r: r["peak_win_rate_p90"],
    "spearman_kl_mu_sq": lambda r: r["spearman_kl_mu_sq"],
}


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "values": values,
        "mean": statistics.fmean(values),
        "spread": max(values) - min(values),
    }


def seed_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (loss, beta) with two or more seeds: each metric's per-seed values, mean, spread."""
    by_key: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_key[r["loss"], r["beta"]].append(r)
    out = []
    for (loss, beta), group in sorted(by_key.items()):
        group = sorted(group, key=lambda r: str(r["seed"]))
        if len({str(r["seed"]) for r in group}) < 2:
            continue
        entry: dict[str, Any] = {"loss": loss, "beta": beta, "seeds": [r["seed"] for r in group]}
        for name, read in METRICS.items():
            values = [read(r) for r in group]
            if all(finite(v) for v in values):
                entry[name] = _stats([float(v) for v in values])
        out.append(entry)
    return out


def per_beta(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per beta and metric: the mean over losses of the seed means and of the seed spreads."""
    by_beta: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for g in groups:
        by_beta[g["beta"]].append(g)
    out: dict[str, dict[str, Any]] = {}
    for beta, gs in sorted(by_beta.items()):
        entry: dict[str, Any] = {"beta": beta, "losses": len(gs)}
        for name in METRICS:
            have = [g[name] for g in gs if name in g]
            if have:
                entry[name] = {
                    "mean": statistics.fmean(h["mean"] for h in have),
                    "mean_spread": statistics.fmean(h["spread"] for h in have),
                }
        out[f"{beta:g}"] = entry
    return out


def by_seed(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per seed: the mean final win rate and final KL over the groups, and in how many groups
    that seed had the highest final win rate. A seed that wins most groups points to a shared
    cause (same seed, same data order and LoRA init for every loss), not noise per run."""
    out: dict[str, dict[str, Any]] = {}
    have = [g for g in groups if "final_win_rate" in g]
    for g in have:
        values = g["final_win_rate"]["values"]
        top = [seed for seed, v in zip(g["seeds"], values, strict=True) if v == max(values)]
        best = top[0] if len(top) == 1 else None  # a tie counts for no seed
        for k, seed in enumerate(g["seeds"]):
            e = out.setdefault(str(seed), {"win_rates": [], "kls": [], "highest_win_rate": 0})
            e["win_rates"].append(values[k])
            if "final_kl" in g:
                e["kls"].append(g["final_kl"]["values"][k])
            e["highest_win_rate"] += int(seed == best)
    return {
        seed: {
            "groups": len(e["win_rates"]),
            "final_win_rate": statistics.fmean(e["win_rates"]),
            "final_kl": statistics.fmean(e["kls"]) if e["kls"] else None,
            "highest_win_rate": e["highest_win_rate"],
        }
        for seed, e in sorted(out.items())
    }


def seeds_section(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json``'s ``seeds`` entry; empty when no setting ran with two seeds."""
    groups = seed_groups(rows)
    if not groups:
        return {}
    return {"groups": groups, "per_beta": per_beta(groups), "by_seed": by_seed(groups)}


def seeds_markdown(section: dict[str, Any]) -> str:
    """report.md's seed tables (empty without repeated seeds)."""
    if not section:
        return ""

    def cell(g: dict[str, Any], name: str, digits: int = 3) -> str:
        if name not in g:
            return "-"
        vals = " / ".join(f"{v:.{digits}g}" for v in g[name]["values"])
        return f"{g[name]['mean']:.{digits}g} ({vals})"

    lines = [
        "",
        "## Seeds: mean (per-seed values) of runs that differ only in the seed",
        "",
        "| loss | beta | final win rate | final KL | median KL | p90 win rate |",
        "|---|---|---|---|---|---|",
    ]
    for g in section["groups"]:
        lines.append(
            f"| {g['loss']} | {g['beta']:g} | {cell(g, 'final_win_rate')} "
            f"| {cell(g, 'final_kl')} | {cell(g, 'median_kl')} "
            f"| {cell(g, 'peak_win_rate_p90')} |"
        )
    lines += [
        "",
        "Per beta, means over losses (seed spread = max - min over seeds, averaged over losses):",
        "",
        "| beta | final win rate | its seed spread | median KL | its seed spread |",
        "|---|---|---|---|---|",
    ]
    for key, e in section["per_beta"].items():
        w, k = e.get("final_win_rate"), e.get("median_kl")
        lines.append(
            f"| {key} | {w['mean']:.3f} | {w['mean_spread']:.3f} " if w else f"| {key} | - | - "
        )
        lines[-1] += f"| {k['mean']:.3g} | {k['mean_spread']:.3g} |" if k else "| - | - |"
    if section.get("by_seed"):
        lines += [
            "",
            "Per seed, over all (loss, beta) groups:",
            "",
            "| seed | groups | mean final win rate | mean final KL | highest win rate in |",
            "|---|---|---|---|---|",
        ]
        for seed, e in section["by_seed"].items():
            kl = f"{e['final_kl']:.3g}" if e["final_kl"] is not None else "-"
            lines.append(
                f"| {seed} | {e['groups']} | {e['final_win_rate']:.3f} | {kl} "
                f"| {e['highest_win_rate']} groups |"
            )
    return "\n".join(lines) + "\n"
