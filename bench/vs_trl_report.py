"""gpo vs TRL (``vs_trl.py``): per-tool statistics of a cell's rounds, and the printed
table and JSON results."""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

from vs_trl_children import BETA
from vs_trl_workload import Workload

LOSS_TOL = 1e-4  # "same work": per-step losses of the two tools agree within this


@dataclasses.dataclass
class ToolStats:
    pairs_per_s: list[float]
    tokens_per_s: list[float]
    peak_rss_mb: list[float]
    losses: list[float]  # first round
    token_digest: str | None
    settings: dict[str, Any]  # first round's record of what the tool ran with


def tool_stats(
    runs: list[dict[str, Any]], wl: Workload, batch: int, warmup: int, steps: int
) -> ToolStats:
    pairs, tokens = [], []
    for r in runs:
        ends = r["step_ends"]
        if len(ends) != warmup + steps:
            raise RuntimeError(f"expected {warmup + steps} step timestamps, got {len(ends)}")
        span = ends[warmup + steps - 1] - ends[warmup - 1]
        pairs.append(batch * steps / span)
        tokens.append(wl.timed_tokens / span)
    return ToolStats(
        pairs,
        tokens,
        [r["peak_rss_mb"] for r in runs],
        runs[0]["losses"],
        runs[0].get("token_digest"),
        runs[0].get("settings", {}),
    )


def result_key(shape: str, precision: str, tool: str) -> str:
    """The JSON key: ``variable``, ``variable_bf16``, ``variable_trl_best``, ..."""
    key = shape if precision == "fp32" else f"{shape}_{precision}"
    return key if tool == "trl" else f"{key}_{tool}"


def _tool_line(name: str, s: ToolStats, batch: int, k: int, n_linear: int, peak: float) -> str:
    med = statistics.median(s.pairs_per_s)
    tok = statistics.median(s.tokens_per_s)
    flops = k * n_linear * tok
    return (
        f"{name:<8} {med:>9.3f} {f'({min(s.pairs_per_s):.3f}-{max(s.pairs_per_s):.3f})':>17} "
        f"{batch / med:>8.3f} {tok:>9.0f} {flops / 1e9:>8.2f} {100 * flops / peak:>6.1f}% "
        f"{max(s.peak_rss_mb):>7.0f}"
    )


def report(
    results: dict[tuple[str, str], dict[str, dict[str, Any]]],
    peak: float,
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> dict[str, dict[str, dict[str, float]]]:
    k = 6 if args.lora else 8
    out: dict[str, dict[str, dict[str, float]]] = {}
    say("")
    say(f"fp32 matmul peak (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s")
    say(f"gpo options: {args.gpo_options or 'defaults (prefix sharing on, no reference cache)'}")
    say(f"model FLOP/s = {k} x N_linear x tokens/s ({'LoRA' if args.lora else 'full fine-tuning'})")
    header = (
        f"{'tool':<8} {'pairs/s':>9} {'(min-max)':>17} {'s/step':>8} {'tokens/s':>9} "
        f"{'GFLOP/s':>8} {'% peak':>7} {'RSS MB':>7}"
    )
    for (shape, precision), by_model in results.items():
        for model, cell in by_model.items():
            stats: dict[str, ToolStats] = cell["stats"]
            n_linear = cell["workload"].linear_params
            say("")
            say(
                f"== {shape} / {model} / {precision} (N_linear {n_linear / 1e6:.3g}M, "
                f"lr {cell['lr']:g}, beta {BETA}, batch {cell['batch']}, padding in TRL's "
                f"batches {100 * cell['workload'].padding_share:.0f}%)"
            )
            say(header)
            for tool, s in stats.items():
                say(_tool_line(tool, s, cell["batch"], k, n_linear, peak))
            g = stats["gpo"]
            say(f"gpo ran with {g.settings}")
            gpo_rate = statistics.median(g.pairs_per_s)
            for tool, diff in cell["loss_max_abs_diff"].items():
                t = stats[tool]
                trl_rate = statistics.median(t.pairs_per_s)
                same = cell["same_tokens"][tool]
                if precision != "fp32":
                    verdict = "bf16 on both sides: reported, not judged"
                elif diff <= LOSS_TOL and same:
                    verdict = "same work"
                else:
                    verdict = "NOT THE SAME"
                say(f"-- gpo vs {tool} ({t.settings})")
                say(f"ratio gpo/{tool} (pairs/s): {gpo_rate / trl_rate:.2f}x")
                say(
                    f"same tokens: {'yes' if same else 'NO'}; loss max |gpo - {tool}| over "
                    f"{len(g.losses)} steps: {diff:.2e} (tolerance {LOSS_TOL:g}): {verdict}"
                )
                first = min(5, len(g.losses))
                say("first losses gpo:  " + " ".join(f"{x:.6f}" for x in g.losses[:first]))
                say(f"first losses {tool}: " + " ".join(f"{x:.6f}" for x in t.losses[:first]))
                out.setdefault(result_key(shape, precision, tool), {})[model] = {
                    "gpo_pairs_per_s": gpo_rate,
                    "trl_pairs_per_s": trl_rate,
                    "ratio": gpo_rate / trl_rate,
                    "gpo_peak_rss_mb": max(g.peak_rss_mb),
                    "trl_peak_rss_mb": max(t.peak_rss_mb),
                    "loss_max_abs_diff": diff,
                }
        if precision != "fp32" and (shape, "fp32") in results:
            for model, cell in by_model.items():
                fp32 = results[(shape, "fp32")].get(model)
                if fp32 is not None:
                    rate = statistics.median(cell["stats"]["gpo"].pairs_per_s)
                    base = statistics.median(fp32["stats"]["gpo"].pairs_per_s)
                    say(f"{shape}/{model}: gpo {precision} / gpo fp32 = {rate / base:.2f}x")
    return out
