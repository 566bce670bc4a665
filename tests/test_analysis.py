import math

import numpy as np
import pytest
import torch

import gpo

# (name, f'(0), f''(0), strength, tail) computed by hand from the GPO paper's Table 1 formulas.
EXPECTED = [
    ("logistic", -0.5, 0.25, 0.5, "I"),
    ("hinge", -1.0, 0.0, 0.0, "II"),
    ("square", -2.0, 2.0, 1.0, "II"),
    ("exponential", -1.0, 1.0, 1.0, "I"),
    ("truncated_quadratic", -2.0, 2.0, 1.0, "II"),
    ("savage", -0.25, 0.125, 0.5, "I"),
]


@pytest.mark.parametrize(("name", "df0", "d2f0", "strength", "tail"), EXPECTED)
def test_builtin_analysis(name, df0, d2f0, strength, tail):
    r = gpo.analyze(name)
    assert r.name == name
    assert r.f0 == pytest.approx(float(gpo.LOSSES[name](torch.zeros(1, dtype=torch.float64))))
    assert r.df0 == pytest.approx(df0, abs=1e-9)
    assert r.d2f0 == pytest.approx(d2f0, abs=1e-9)
    assert r.strength == pytest.approx(strength, abs=1e-9)
    assert r.tail == tail
    assert r.convex == (name != "savage")


def test_savage_nonconvex_region():
    r = gpo.analyze("savage")
    assert not r.convex
    assert len(r.nonconvex_regions) == 1
    lo, hi = r.nonconvex_regions[0]
    assert lo == -math.inf
    assert hi == pytest.approx(-math.log(2.0), abs=0.01)


def test_concave_kink_is_found():
    # slope -1 right of v = -2 but -0.5 left of it: a concave kink at -2
    def f(v):
        return torch.relu(1 - v) - 0.5 * torch.relu(-2 - v)

    r = gpo.analyze(f)
    assert not r.convex
    assert len(r.nonconvex_regions) == 1
    lo, hi = r.nonconvex_regions[0]
    assert -2.01 <= lo <= -2.0 + 1e-9 and -2.0 - 1e-9 <= hi <= -1.99


def test_non_decreasing_f_is_refused_unless_allowed():
    with pytest.raises(ValueError, match=r"f'\(0\) = 1 >= 0"):
        gpo.analyze("user_losses:increasing")
    r = gpo.analyze("user_losses:increasing", allow_invalid=True)
    assert r.df0 == pytest.approx(1.0)
    assert r.tail == "II"


def test_user_loss_analysis():
    r = gpo.analyze("user_losses:smooth_hinge")
    s = 1 / (1 + math.exp(-1.0))  # sigmoid(1)
    assert r.df0 == pytest.approx(-s)
    assert r.d2f0 == pytest.approx(s * (1 - s))
    assert r.strength == pytest.approx(1 - s)
    assert r.convex and r.tail == "I"


def test_non_autograd_callable_uses_finite_differences():
    def numpy_logistic(v):
        return torch.from_numpy(np.log1p(np.exp(-v.detach().numpy())))

    r = gpo.analyze(numpy_logistic)
    assert r.df0 == pytest.approx(-0.5, abs=1e-6)
    assert r.d2f0 == pytest.approx(0.25, abs=1e-5)
    assert r.convex and r.tail == "I"


def test_kink_at_zero():
    # slopes -1 (left) and -0.5 (right): f'(0) is the mean, f''(0) is +inf (a convex kink)
    r = gpo.analyze(lambda v: torch.relu(-v) - 0.5 * torch.relu(v) + 1)
    assert r.df0 == pytest.approx(-0.75, abs=1e-6)
    assert r.d2f0 == math.inf
    assert r.strength == math.inf


def test_equivalent_beta():
    assert gpo.equivalent_beta(0.2, "logistic", "square") == pytest.approx(0.1)
    assert gpo.equivalent_beta(0.1, "square", "savage") == pytest.approx(0.2)
    assert gpo.equivalent_beta(1.0, "exponential", "truncated_quadratic") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="strength"):
        gpo.equivalent_beta(1.0, "logistic", "hinge")
    with pytest.raises(ValueError, match="beta"):
        gpo.equivalent_beta(-1.0, "logistic", "square")


def test_report_fields_are_the_documented_ones():
    r = gpo.analyze("logistic")
    assert list(r.to_dict()) == [
        "name",
        "f0",
        "df0",
        "d2f0",
        "strength",
        "convex",
        "nonconvex_regions",
        "tail",
    ]
