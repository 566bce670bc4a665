"""`gpo report` on a sweep with online and offline runs (issue 31): win rate at matched KL,
interpolated between offline runs, never extrapolated."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gpo.experiments.report.collect import RunData
from gpo.experiments.report.online import matched, online_markdown, online_section


def _run(name: str, online: bool, kl: float, rate: float, se: float, acc: float) -> RunData:
    rec = {"step": 30, "eval/kl": kl, "eval/win_rate": rate, "eval/win_rate_se": se,
           "eval/rewards/accuracies": acc}  # fmt: skip
    config = {"loss": "logistic", "beta": 0.1, "seed": 0, "online": online}
    return RunData(name, Path(name), config, [{"step": 10, "eval/kl": 0.5}, rec], [], True, [])


def test_matched_kl_interpolates_between_the_bracketing_offline_runs():
    off = [_run("off-a", False, 2.0, 0.60, 0.03, 0.7), _run("off-b", False, 6.0, 0.70, 0.04, 0.8)]
    on = _run("on", True, 3.0, 0.75, 0.02, 0.6)
    section = online_section([*off, on])
    row = next(f for f in section["finals"] if f["online"])
    m = row["matched"]
    assert m["offline_win_rate"] == pytest.approx(0.60 + 0.25 * 0.10)  # a quarter of the way
    assert m["difference"] == pytest.approx(0.75 - 0.625)
    assert m["difference_se"] == pytest.approx(
        math.hypot(0.02, math.hypot(0.75 * 0.03, 0.25 * 0.04))
    )
    assert m["between"] == ["off-a", "off-b"]
    assert row["accuracy"] == 0.6  # the held-out accuracy of both kinds is in the table
    text = online_markdown(section)
    assert "+0.125 +- " in text and "| off-b | offline | 30 | 6.00 |" in text


def test_no_number_outside_the_offline_kl_range_and_no_section_without_both_kinds():
    finals = online_section([_run("off", False, 2.0, 0.6, 0.03, 0.7),
                             _run("off2", False, 4.0, 0.6, 0.03, 0.7),
                             _run("on", True, 9.0, 0.8, 0.02, 0.6)])["finals"]  # fmt: skip
    assert next(f for f in finals if f["online"])["matched"] is None  # not extrapolated
    assert matched({"kl": 1.0, "win_rate": 0.5, "win_rate_se": 0.1}, []) is None
    assert online_section([_run("off", False, 2.0, 0.6, 0.03, 0.7)]) == {}
    assert "outside the offline KL range" in online_markdown({"finals": finals})


def test_the_figure_has_a_panel_per_loss(tmp_path):
    from gpo.experiments.report.online import draw_online_figure
    from gpo.io import pyplot

    runs = [_run("off", False, 2.0, 0.6, 0.03, 0.7), _run("on", True, 3.0, 0.7, 0.02, 0.6)]
    square = _run("off-sq", False, 1.0, 0.55, 0.03, 0.7)
    square.config["loss"] = "square"
    [path] = draw_online_figure(pyplot(), online_section([*runs, square]), tmp_path)
    assert path.name == "online_vs_offline_win_rate_vs_kl.png" and path.stat().st_size > 0


def test_ipo_md_is_a_third_kind_matched_against_offline_and_seeds_are_grouped():
    off = [_run("off-a", False, 2.0, 0.60, 0.03, 0.7), _run("off-b", False, 6.0, 0.70, 0.04, 0.8)]
    on = [_run(f"on-{s}", True, 3.0 + s, 0.75 + 0.05 * s, 0.02, 0.6) for s in (0, 1)]
    for s, run in enumerate(on):
        run.config["seed"] = s
    md = _run("md", True, 4.0, 0.65, 0.02, 0.6)
    md.config["online_mixture"] = 0.5
    assert [r.objective for r in (off[0], on[0], md)] == [
        "logistic", "logistic online", "logistic IPO-MD 0.5"]  # fmt: skip
    assert md.key == ("logistic IPO-MD 0.5", 0.1)  # seeds and figures keep them apart
    section = online_section([*off, *on, md])
    assert next(f for f in section["finals"] if f["run"] == "md")["kind"] == "IPO-MD 0.5"
    online = next(g for g in section["groups"] if g["kind"] == "online")
    assert online["seeds"] == [0, 1] and online["difference"]["n"] == 2
    # seed 0: 0.75 - 0.625; seed 1 at KL 4: 0.80 - 0.65
    assert online["difference"]["mean"] == pytest.approx((0.125 + 0.15) / 2)
    assert online["difference"]["spread"] == pytest.approx(0.025)
    assert "| IPO-MD 0.5 | logistic | 0.1 |" in online_markdown(section)
    ipo_md = next(g for g in section["groups"] if g["kind"] == "IPO-MD 0.5")
    assert math.isnan(ipo_md["kl"]["spread"])  # one seed: no spread, not 0
    assert "4.000 (n 1)" in online_markdown(section)


def test_the_peak_checkpoint_marks_where_more_kl_stopped_buying_win_rate():
    run = _run("off", False, 9.0, 0.6, 0.03, 0.7)
    run.evals.insert(1, {"step": 20, "eval/kl": 5.0, "eval/win_rate": 0.8})
    final = online_section([run, _run("on", True, 3.0, 0.7, 0.02, 0.6)])["finals"][0]
    assert final["peak"] == {"step": 20, "kl": 5.0, "win_rate": 0.8}
    assert final["curve"] == [[5.0, 0.8], [9.0, 0.6]]
    run.finished = False  # a sweep still running: its last checkpoint is marked, not its end
    text = online_markdown(online_section([run, _run("on", True, 3.0, 0.7, 0.02, 0.6)]))
    assert "| off | offline | 30 (running) | 9.00 |" in text
