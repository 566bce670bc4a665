"""`gpo report` on a sweep with repeated seeds: per (loss, beta) each seed's value, the mean and
the spread, in summary.json and report.md; on hand-made run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpo.cli import main
from gpo.experiments.report.seeds import seeds_section


def _run(sweep: Path, loss: str, beta: float, seed: int, evals: list[tuple[float, float]]) -> None:
    """A finished run whose evaluations had these (KL, win rate) values, in order."""
    d = sweep / "runs" / f"loss={loss}_beta={beta}_seed={seed}"
    d.mkdir(parents=True)
    config = {"loss": loss, "beta": beta, "seed": seed, "kl_target": None}
    (d / "config.json").write_text(json.dumps(config))
    records = [{"step": 1, "loss": 0.69}]
    for k, (kl, wr) in enumerate(evals):
        records.append({"step": 10 * (k + 1), "eval/loss": 0.6, "eval/mu_sq_loss": kl / 2,
                        "eval/kl": kl, "eval/kl_se": 0.1, "eval/win_rate": wr,
                        "eval/win_rate_se": 0.04})  # fmt: skip
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "summary.json").write_text(json.dumps({"steps": 30}))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    _run(tmp_path, "logistic", 0.1, 0, [(1.0, 0.5), (2.0, 0.6), (4.0, 0.7)])
    _run(tmp_path, "logistic", 0.1, 1, [(1.0, 0.6), (3.0, 0.8), (6.0, 0.9)])
    _run(tmp_path, "hinge", 0.1, 0, [(0.5, 0.5), (1.0, 0.5), (2.0, 0.6)])
    _run(tmp_path, "hinge", 0.1, 1, [(0.5, 0.5), (1.0, 0.6), (2.0, 0.7)])
    _run(tmp_path, "hinge", 1.0, 0, [(0.1, 0.5), (0.2, 0.5), (0.3, 0.5)])  # one seed only
    return tmp_path


def test_seed_groups_by_hand(sweep: Path) -> None:
    from gpo.experiments.report.collect import load_runs, run_rows

    section = seeds_section(run_rows(load_runs(sweep)))
    groups = {(g["loss"], g["beta"]): g for g in section["groups"]}
    assert set(groups) == {("logistic", 0.1), ("hinge", 0.1)}  # hinge at 1.0 has one seed
    lg = groups["logistic", 0.1]
    assert lg["seeds"] == [0, 1]
    assert lg["final_win_rate"]["values"] == [0.7, 0.9]
    assert lg["final_win_rate"]["mean"] == pytest.approx(0.8)
    assert lg["final_win_rate"]["spread"] == pytest.approx(0.2)
    assert lg["median_kl"]["values"] == [2.0, 3.0]
    assert lg["final_kl"]["spread"] == pytest.approx(2.0)
    b = section["per_beta"]["0.1"]
    assert b["losses"] == 2
    assert b["final_win_rate"]["mean"] == pytest.approx((0.8 + 0.65) / 2)
    assert b["final_win_rate"]["mean_spread"] == pytest.approx((0.2 + 0.1) / 2)
    assert "1" not in section["per_beta"]
    # seed 1 has the higher final win rate in both groups (0.9 vs 0.7, 0.7 vs 0.6)
    assert section["by_seed"]["1"]["highest_win_rate"] == 2
    assert section["by_seed"]["0"]["highest_win_rate"] == 0
    assert section["by_seed"]["0"]["final_win_rate"] == pytest.approx((0.7 + 0.6) / 2)
    assert section["by_seed"]["1"]["final_kl"] == pytest.approx((6.0 + 2.0) / 2)


def test_report_writes_the_seed_tables(sweep: Path, capsys) -> None:
    main(["report", str(sweep)])
    summary = json.loads((sweep / "report" / "summary.json").read_text())
    assert len(summary["seeds"]["groups"]) == 2
    # mu-sq = KL / 2 at every checkpoint: rank-correlated 1 within each seed; beta 1 has one seed
    assert summary["spearman_per_beta"]["0.1"]["by_seed"] == pytest.approx({"0": 1.0, "1": 1.0})
    assert "by_seed" not in summary["spearman_per_beta"]["1"]
    text = (sweep / "report" / "report.md").read_text()
    assert "## Seeds" in text
    assert "| logistic | 0.1 | 0.8 (0.7 / 0.9) |" in text
    assert "| 1 | 2 | 0.800 | 4 | 2 groups |" in text


def test_no_seed_section_without_repeated_seeds(tmp_path: Path) -> None:
    _run(tmp_path, "logistic", 0.1, 0, [(1.0, 0.5), (2.0, 0.6), (4.0, 0.7)])
    main(["report", str(tmp_path)])
    assert "seeds" not in json.loads((tmp_path / "report" / "summary.json").read_text())


def test_side_by_side_is_judged_per_seed(sweep: Path) -> None:
    from gpo.experiments.report.collect import load_runs, side_by_side

    good = "The cat sat quietly on the warm mat by the door."  # on topic, 11 words, a sentence
    bad = "cat cat cat"
    texts = {("logistic", 0): good, ("hinge", 0): bad, ("logistic", 1): bad, ("hinge", 1): good}
    for (loss, seed), text in texts.items():
        d = sweep / "runs" / f"loss={loss}_beta=0.1_seed={seed}" / "samples"
        d.mkdir()
        row = {"prompt": "Write one sentence about a cat.", "policy": text, "opponent": bad}
        (d / "step-000030.jsonl").write_text(json.dumps(row) + "\n")
    sbs = side_by_side(load_runs(sweep), 0.1, "gold")
    assert sbs["losses"] == ["hinge", "logistic"]
    assert sbs["win_rate"] == [[0.5, 0.0], [1.0, 0.5]]  # seed 0: logistic wins
    assert sbs["by_seed"] == {"0": [[0.5, 0.0], [1.0, 0.5]], "1": [[0.5, 1.0], [0.0, 0.5]]}
