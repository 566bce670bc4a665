import json
import math

import numpy as np
import pytest

from gpo.cli import main
from gpo.experiments.taylor import TaylorConfig, fit_order, run_taylor
from gpo.losses.family import LOSSES


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


# Relative gradient errors worked out by hand from err = |f'(v) - f'(0) - f''(0) v| / |f'(0)|
# (worst sign of v = beta rho), for losses with closed-form derivatives.
HAND = {
    # f' = -exp(-v), f'(0) = -1, f''(0) = 1
    "exponential": lambda v: np.maximum(abs(1 - v - np.exp(-v)), abs(1 + v - np.exp(v))),
    # f' = -sigmoid(-v), f'(0) = -1/2, f''(0) = 1/4; the error is odd in v
    "logistic": lambda v: abs(1 - 2 * sigmoid(-v) - v / 2),
    # f = (v - 1)^2 is its own IPO-equivalent
    "square": lambda v: 0 * v,
    # f = (1 - v)^2 for v < 1 (error 0); beyond, f'(v) = 0 and err = |0 + 2 - 2 v| / 2 = v - 1
    "truncated_quadratic": lambda v: np.where(v > 1, v - 1, 0.0),
}


@pytest.fixture(scope="module")
def results():
    return run_taylor(TaylorConfig(betas=[0.5, 2.0], rho_min=1e-3, rho_max=1.0, points=13))


def test_hinge_is_skipped_with_a_reason(results):
    assert "hinge" not in results["losses"]
    assert results["skipped"]["hinge"].startswith("f''(0) = 0")
    assert set(results["losses"]) | set(results["skipped"]) == set(LOSSES)


@pytest.mark.parametrize("name", sorted(HAND))
def test_errors_match_hand_formulas(results, name):
    rho = np.asarray(results["rho"])
    for key, data in results["losses"][name]["betas"].items():
        expected = HAND[name](float(key) * rho)
        np.testing.assert_allclose(data["error"], expected, rtol=1e-7, atol=1e-13)


@pytest.mark.parametrize("name", ["logistic", "exponential", "savage"])
def test_error_vanishes_as_rho_goes_to_zero(results, name):
    r = results["losses"][name]
    rho = np.asarray(results["rho"])
    small = rho <= 0.05
    for data in r["betas"].values():
        err = np.asarray(data["error"])[small]
        assert err[0] < 1e-5
        assert np.all(np.diff(err) > 0)  # strictly shrinking towards rho = 0
    # Order 2 in general, 3 for the logistic loss (its f'''(0) = 0); err ~ C (beta |rho|)^k.
    expected_order = 3.0 if name == "logistic" else 2.0
    assert r["order"] == pytest.approx(expected_order, abs=0.05)
    assert r["max_error_small_v"] < 0.01


def test_exact_losses_report_no_order(results):
    for name in ("square", "truncated_quadratic"):
        assert results["losses"][name]["order"] is None


def test_strength_sets_beta_ipo(results):
    assert results["losses"]["logistic"]["betas"]["2.0"]["beta_ipo"] == pytest.approx(1.0)
    assert results["losses"]["savage"]["betas"]["0.5"]["beta_ipo"] == pytest.approx(0.25)


def test_fit_order_recovers_a_power_law():
    rho = np.geomspace(1e-3, 1e-1, 9)
    order, const = fit_order(rho, {"1.0": 0.3 * rho**2, "2.0": 0.3 * (2 * rho) ** 2})
    assert order == pytest.approx(2.0) and const == pytest.approx(0.3)
    assert fit_order(rho, {"1.0": 0 * rho}) == (None, None)


def test_cli_with_user_loss(tmp_path, capsys):
    out = tmp_path / "taylor"
    argv = ["experiment", "taylor", "--loss", "user_losses:smooth_hinge", "--points", "9"]
    assert main([*argv, "--betas", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped hinge" in printed and "user_losses:smooth_hinge" in printed
    assert (out / "taylor.png").stat().st_size > 10_000
    res = json.loads((out / "results.json").read_text())
    user = res["losses"]["user_losses:smooth_hinge"]
    # softplus(1 - v): f'(0) = -sigmoid(1), f''(0) = sigmoid(1) sigmoid(-1), strength sigmoid(-1).
    assert user["strength"] == pytest.approx(1 / (1 + math.e), rel=1e-9)
    assert user["order"] == pytest.approx(2.0, abs=0.1)
    assert len(res["rho"]) == 9 and list(user["betas"]) == ["1.0"]
