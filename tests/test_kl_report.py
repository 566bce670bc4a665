"""`gpo report` on KL-targeted runs: the tracking table, win rate at equal KL against fixed-beta
runs (same sweep or --frontier), and final beta vs equivalent_beta; on hand-made run folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gpo.cli import main
from gpo.experiments.report.kl_targets import frontier_at


def _run(sweep: Path, name: str, config: dict, final: dict, beta: float | None = None) -> None:
    d = sweep / "runs" / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"seed": 0, "kl_prompts": 64, "kl_samples": 2,
                                               "kl_target": None, **config}))  # fmt: skip
    records = [{"step": 1, "loss": 0.69}]
    if beta is not None:  # a steered run logs beta every step, KL at measurements
        records += [{"step": 1, "kl_control/beta": 0.1, "kl_control/kl": 0.5},
                    {"step": 2, "kl_control/beta": beta, "kl_control/lr_scale": 0.5}]  # fmt: skip
    records.append({"step": 2, "eval/loss": 0.6, "eval/mu_sq_loss": 1.0,
                    **{f"eval/{k}": v for k, v in final.items()}})  # fmt: skip
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"steps": 2} | ({"final_beta": beta} if beta is not None else {})
    (d / "summary.json").write_text(json.dumps(summary))


def _fixed(sweep: Path) -> None:
    for beta, kl, wr in ((0.1, 2.0, 0.60), (0.01, 8.0, 0.70)):
        final = {"kl": kl, "kl_se": 0.1, "win_rate": wr, "win_rate_se": 0.04}
        _run(sweep, f"loss=logistic_beta={beta}", {"loss": "logistic", "beta": beta}, final)


def _steered(sweep: Path) -> None:
    runs = [("logistic", 4.2, 0.2), ("square", 5.6, 0.05), ("hinge", 4.0, 3.0)]
    for loss, kl, beta in runs:
        final = {"kl": kl, "kl_se": 0.3, "win_rate": 0.7, "win_rate_se": 0.04}
        config = {"loss": loss, "beta": 0.1, "kl_target": 4.0}
        _run(sweep, f"loss={loss}_kl_target=4", config, final, beta=beta)


def test_frontier_is_linear_in_log_kl_between_the_bracketing_runs():
    pts = [(2.0, 0.6, 0.04), (8.0, 0.7, 0.03), (0.5, 0.5, 0.05)]
    w, se = frontier_at(pts, 4.0)  # halfway in log KL between 2 and 8
    assert w == pytest.approx(0.65) and se == pytest.approx(math.hypot(0.02, 0.015))
    assert frontier_at(pts, 2.0) == pytest.approx((0.6, 0.04))
    assert frontier_at(pts, 9.0) is None and frontier_at(pts, 0.1) is None  # no extrapolation
    assert frontier_at(pts, -1.0) is None


@pytest.mark.parametrize("frontier_elsewhere", [False, True])
def test_report_tables_for_kl_targeted_runs(tmp_path, frontier_elsewhere, capsys):
    sweep = tmp_path / "kl"
    _steered(sweep)
    other = tmp_path / "fixed"
    _fixed(other if frontier_elsewhere else sweep)
    argv = ["report", str(sweep), "--out", str(tmp_path / "report")]
    assert main(argv + (["--frontier", str(other)] if frontier_elsewhere else [])) == 0
    section = json.loads((tmp_path / "report" / "summary.json").read_text())["kl_control"]
    rows = {r["loss"]: r for r in section["tracking"]}
    assert rows["logistic"]["within"] and rows["hinge"]["within"]
    assert not rows["square"]["within"]  # 5.6 is 40% over 4
    assert rows["square"]["relative_error"] == pytest.approx(0.4)
    assert section["within"] == 2 and section["diverged"] == 0
    assert rows["logistic"]["final_beta"] == 0.2 and rows["logistic"]["kl_samples"] == 128
    assert rows["logistic"]["final_lr_scale"] == 0.5  # from the log: the summary lacks it

    equal = {r["loss"]: r for r in section["equal_kl"]}
    t = math.log(4.2 / 2) / math.log(8 / 2)
    assert equal["logistic"]["fixed_beta_win_rate"] == pytest.approx(0.6 + 0.1 * t)
    assert equal["logistic"]["difference"] == pytest.approx(0.7 - 0.6 - 0.1 * t)
    assert equal["square"]["fixed_beta_win_rate"] is None  # no fixed-beta square runs
    assert section["equal_kl_summary"]["runs"] == 1

    theory = {r["loss"]: r for r in section["theory"]}
    # |f''(0)/f'(0)|: logistic 1/2, square 1: square's predicted beta is half logistic's
    assert theory["square"]["ratio"] == pytest.approx(0.05 / (0.2 * 0.5))
    assert theory["logistic"]["ratio"] == pytest.approx(1.0)
    assert theory["hinge"]["ratio"] is None  # f''(0) = 0: no equivalent beta

    for name in ("kl_control_trajectories.png", "kl_control_tracking.png",
                 "kl_control_win_rate_at_equal_kl.png"):  # fmt: skip
        assert (tmp_path / "report" / name).stat().st_size > 5000
    assert "KL-targeted runs: 2 of 3 end within +-25%" in capsys.readouterr().out
