import json
import math

import numpy as np
import pytest
from scipy.integrate import quad

from gpo.cli import main
from gpo.experiments.mog import (
    Mixture,
    MogConfig,
    draw_mu,
    exact_curves,
    local_minima,
    run_mog,
)


def test_local_minima_interior_strict():
    c = np.arange(7.0)
    assert local_minima(c, np.array([0, 1, 0, 2, 2, 3, -1.0])) == [2.0]  # ends and plateau skipped
    assert local_minima(c, np.array([5, 4, 3, 2, 1, 0, -1.0])) == []


def test_single_gaussian_closed_forms():
    # pi_ref = N(0, s^2): h_c(x) = (2 x c - c^2) / (2 s^2), so KL = c^2 / (2 s^2) and
    # Var_mu[h_c] = c^2 Var_mu[x] / s^4; with mu = N(u, m^2), Var_mu[x] = m^2.
    s, m = 0.1, 0.05
    cfg = MogConfig(ref_means=[0.0], ref_weights=[1.0], mu_n=1, grid=21, samples=4000)
    res = run_mog(cfg)
    c = np.asarray(res["c"])
    np.testing.assert_allclose(res["kl_exact"], c**2 / (2 * s**2), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(res["mu_sq_exact"], c**2 * m**2 / s**4, rtol=1e-10, atol=1e-14)
    # The MC estimates scatter around them within a few standard errors.
    for key in ("kl", "mu_sq"):
        z = (np.asarray(res[key]) - np.asarray(res[key + "_exact"]))[c != 0]
        assert np.all(np.abs(z) < 4 * np.asarray(res[key + "_se"])[c != 0]), key


def mixture_pdf(x: float, means, stds, weights) -> float:
    """Scalar mixture density, written independently of gpo.experiments.mog."""
    return sum(
        w * math.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
        for m, s, w in zip(means, stds, weights, strict=True)
    )


def test_quadrature_matches_scipy_quad():
    cfg = MogConfig()
    mu = draw_mu(cfg, np.random.default_rng(3))
    cs = np.array([-0.7, 0.25, 0.9])
    ref = Mixture(cfg.ref_means, [cfg.ref_std] * 3, cfg.ref_weights)
    kl, var = exact_curves(ref, mu, cs)

    def p_ref(x: float) -> float:
        return mixture_pdf(x, cfg.ref_means, [cfg.ref_std] * 3, cfg.ref_weights)

    def p_mu(x: float) -> float:
        return mixture_pdf(x, list(mu.means), [cfg.mu_std] * 3, [1 / 3] * 3)

    def h(x: float, c: float) -> float:  # log pi_theta(x) - log pi_ref(x)
        return math.log(p_ref(x - c)) - math.log(p_ref(x))

    def kl_integrand(x: float, c: float) -> float:
        return p_ref(x - c) * h(x, c)

    def moment(x: float, c: float, center: float, power: int) -> float:
        return p_mu(x) * (h(x, c) - center) ** power

    opts = {"limit": 400, "epsabs": 1e-12, "epsrel": 1e-11, "points": sorted(mu.means)}
    for i, c in enumerate(cs):
        kl_q = quad(kl_integrand, -3, 3, args=(c,), **{**opts, "points": [c - 0.8, c, c + 0.8]})[0]
        m1 = quad(moment, -2, 2, args=(c, 0.0, 1), **opts)[0]
        m2 = quad(moment, -2, 2, args=(c, m1, 2), **opts)[0]
        assert kl[i] == pytest.approx(kl_q, rel=1e-9)
        assert var[i] == pytest.approx(m2, rel=1e-9)


def test_mc_agrees_with_quadrature_and_curves_are_sane():
    res = run_mog(MogConfig(seed=1, grid=41))
    c = np.asarray(res["c"])
    assert len(c) == 41 and c[0] == -1.0 and c[-1] == 1.0 and c[20] == 0.0
    arrays = {k: np.asarray(res[k]) for k in ("kl", "kl_se", "mu_sq", "mu_sq_se")}
    kl_x, sq_x = np.asarray(res["kl_exact"]), np.asarray(res["mu_sq_exact"])
    assert np.all(kl_x >= 0) and np.all(sq_x >= 0) and kl_x[20] == sq_x[20] == 0.0
    assert np.all(arrays["kl"] + 3 * arrays["kl_se"] >= 0)  # KL >= 0 within MC error
    assert arrays["kl"][20] == arrays["mu_sq"][20] == 0.0  # pi_theta = pi_ref exactly at c = 0
    for key, exact in (("kl", kl_x), ("mu_sq", sq_x)):
        z = np.abs(arrays[key] - exact)[c != 0] / arrays[key + "_se"][c != 0]
        assert z.max() < 5, (key, z.max())
        assert np.mean(z < 2) > 0.7, (key, z)
    assert 0.0 in res["local_minima"]["kl_exact"] and 0.0 in res["local_minima"]["mu_sq_exact"]


def test_search_skips_draws_without_a_far_minimum():
    # Seeds 1-3 have squared-loss minima at |c| = 0.46, 0.59, 0.53 only; seed 4 at 0.78.
    res = run_mog(MogConfig(seed=1, search=6, min_shift=0.6, samples=200))
    assert [t["seed"] for t in res["search"]] == [1, 2, 3, 4]
    assert [bool(t["counterexample_c"]) for t in res["search"]] == [False, False, False, True]
    assert res["seed"] == 4 and res["counterexample"]
    (c_star,) = res["counterexample_c"]
    assert abs(c_star) > 0.6 and c_star in res["local_minima"]["mu_sq_exact"]
    assert res["local_minima"]["kl_exact"] == [0.0]
    none = run_mog(MogConfig(seed=1, search=2, min_shift=0.95, samples=200))
    assert none["seed"] == 1 and not none["counterexample"] and len(none["search"]) == 2


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "mog"
    argv = ["experiment", "mog", "--search", "5", "--samples", "500", "--grid", "101"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "counterexample" in capsys.readouterr().out
    assert (out / "mog.png").stat().st_size > 10_000
    res = json.loads((out / "results.json").read_text())
    for key in ("c", "kl", "kl_se", "mu_sq", "mu_sq_se", "kl_exact", "mu_sq_exact"):
        assert len(res[key]) == 101, key
    assert len(res["u"]) == 3 and all(-1 <= u <= 1 for u in res["u"])
    assert set(res["local_minima"]) == {"kl", "mu_sq", "kl_exact", "mu_sq_exact"}
    assert res["config"]["samples"] == 500 and res["counterexample"]
