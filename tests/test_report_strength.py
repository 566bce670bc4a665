"""`gpo report`'s beta-vs-KL section: the beta reaching a KL (log-log interpolation) and the
GPO strength translation (s_a beta_a = s_b beta_b) against it, on hand-made run folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gpo.cli import main
from gpo.experiments.report.collect import load_runs, run_rows
from gpo.experiments.report.strength import beta_at_kl, strength_section


def _run(sweep: Path, loss: str, beta: float, seed: int, kl: float, target=None) -> None:
    d = sweep / "runs" / f"loss={loss}_beta={beta}_seed={seed}_t={target}"
    d.mkdir(parents=True)
    config = {"loss": loss, "beta": beta, "seed": seed, "kl_target": target}
    (d / "config.json").write_text(json.dumps(config))
    records = [{"step": 1, "loss": 0.69}, {"step": 10, "eval/kl": kl, "eval/mu_sq_loss": kl}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "summary.json").write_text(json.dumps({"steps": 10}))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    _run(tmp_path, "logistic", 0.1, 0, 6.0)  # seeds average to KL 8
    _run(tmp_path, "logistic", 0.1, 1, 10.0)
    _run(tmp_path, "logistic", 1.0, 0, 2.0)
    _run(tmp_path, "square", 0.1, 0, 4.0)
    _run(tmp_path, "square", 1.0, 0, 1.0)
    _run(tmp_path, "hinge", 0.1, 0, 4.0)  # s = 0: no translation
    _run(tmp_path, "hinge", 1.0, 0, 1.0)
    _run(tmp_path, "square", 0.1, 0, 50.0, target=3.0)  # KL-targeted: beta was steered, left out
    return tmp_path


def test_beta_at_kl_interpolates_in_log_log() -> None:
    pts = [(0.1, 8.0), (1.0, 2.0), (10.0, 1.0)]
    assert beta_at_kl(pts, 4.0) == pytest.approx(math.sqrt(0.1))  # halfway in log KL
    assert beta_at_kl(pts, 2.0) == pytest.approx(1.0)
    assert beta_at_kl(pts, math.sqrt(2.0)) == pytest.approx(math.sqrt(10.0))
    assert beta_at_kl(pts, 9.0) is None and beta_at_kl(pts, 0.5) is None  # not bracketed
    assert beta_at_kl([(0.1, 2.0), (1.0, 8.0)], 4.0) is None  # KL rising with beta


def test_strength_section_by_hand(sweep: Path) -> None:
    section = strength_section(run_rows(load_runs(sweep)), targets=(2.0, 4.0))
    lg, sq = section["losses"]["logistic"], section["losses"]["square"]
    assert lg["strength"] == pytest.approx(0.5) and sq["strength"] == pytest.approx(1.0)
    assert section["losses"]["hinge"]["strength"] is None
    assert lg["final_kl_by_beta"] == {"0.1": 8.0, "1": 2.0}
    assert sq["final_kl_by_beta"] == {"0.1": 4.0, "1": 1.0}  # the KL-targeted run is not in it
    assert lg["beta_at_kl"] == {"2": pytest.approx(1.0), "4": pytest.approx(math.sqrt(0.1))}
    assert sq["beta_at_kl"] == {"2": pytest.approx(math.sqrt(0.1)), "4": pytest.approx(0.1)}
    ratios = {r["kl"]: r for r in section["ratios"]}
    assert [r["loss"] for r in section["ratios"]] == ["square", "square"]  # not hinge
    assert ratios[2.0]["predicted"] == pytest.approx(0.5)  # s_logistic / s_square
    assert ratios[2.0]["measured"] == pytest.approx(math.sqrt(0.1))
    assert ratios[4.0]["measured"] == pytest.approx(0.1 / math.sqrt(0.1))


def test_report_writes_the_strength_tables(sweep: Path) -> None:
    main(["report", str(sweep)])
    summary = json.loads((sweep / "report" / "summary.json").read_text())
    assert summary["strength"]["anchor"] == "logistic"
    text = (sweep / "report" / "report.md").read_text()
    assert "## Beta vs KL" in text
    assert "| square | 1 | 4 | 1 |" in text
    assert "| square | 2 | 0.5 | 0.316 |" in text


def test_no_strength_section_with_one_beta_per_loss(tmp_path: Path) -> None:
    _run(tmp_path, "logistic", 0.1, 0, 6.0)
    assert strength_section(run_rows(load_runs(tmp_path))) == {}
