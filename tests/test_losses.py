import math

import pytest
import torch

import gpo
from gpo.losses.family import (
    exponential,
    hinge,
    logistic,
    savage,
    square,
    truncated_quadratic,
)
from gpo.losses.numerics import EXP_CAP, NonFiniteError
from gpo.losses.objectives import OBJECTIVES, resolve_objective

LN3 = math.log(3.0)

# (function, v, hand-computed f(v)); includes |v| = 1e4 asymptotics.
VALUES = [
    (logistic, 0.0, math.log(2.0)),
    (logistic, 1.0, math.log1p(math.exp(-1.0))),
    (logistic, -2.0, math.log1p(math.exp(2.0))),
    (logistic, 1e4, 0.0),
    (logistic, -1e4, 1e4),
    (hinge, 0.5, 0.5),
    (hinge, 2.0, 0.0),
    (hinge, -1e4, 10001.0),
    (hinge, 1e4, 0.0),
    (square, 0.0, 1.0),
    (square, 3.0, 4.0),
    (square, 1e4, 9999.0**2),
    (square, -1e4, 10001.0**2),
    (exponential, 0.0, 1.0),
    (exponential, 2.0, math.exp(-2.0)),
    (exponential, 1e4, 0.0),
    (truncated_quadratic, 0.0, 1.0),
    (truncated_quadratic, -1.0, 4.0),
    (truncated_quadratic, 2.0, 0.0),
    (truncated_quadratic, 1e4, 0.0),
    (truncated_quadratic, -1e4, 10001.0**2),
    (savage, 0.0, 0.25),
    (savage, LN3, 1.0 / 16.0),
    (savage, -LN3, 9.0 / 16.0),
    (savage, 1e4, 0.0),
    (savage, -1e4, 1.0),
]


@pytest.mark.parametrize(("fn", "v", "expected"), VALUES)
def test_loss_values(fn, v, expected):
    for dtype in (torch.float32, torch.float64):
        out = fn(torch.tensor([v], dtype=dtype))
        assert torch.isfinite(out).all()
        assert out.item() == pytest.approx(expected, rel=1e-6, abs=1e-12)


# f'(v) by hand at a few points.
GRADS = [
    (logistic, 0.0, -0.5),
    (logistic, 2.0, -1.0 / (1.0 + math.exp(2.0))),
    (hinge, 0.0, -1.0),
    (hinge, 3.0, 0.0),
    (square, 0.0, -2.0),
    (exponential, 1.0, -math.exp(-1.0)),
    (truncated_quadratic, 0.0, -2.0),
    (truncated_quadratic, 2.0, 0.0),
    (savage, 0.0, -0.25),
    (savage, LN3, -2.0 * (1 / 4) ** 2 * (3 / 4)),
]


@pytest.mark.parametrize(("fn", "v", "expected"), GRADS)
def test_loss_gradients_by_hand(fn, v, expected):
    x = torch.tensor([v], dtype=torch.float64, requires_grad=True)
    fn(x).sum().backward()
    assert x.grad.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", list(gpo.LOSSES))
def test_gradcheck_away_from_kinks(name):
    # Kinks of hinge / truncated quadratic sit at v = 1; these points avoid it.
    v = torch.tensor([-5.0, -1.3, -0.2, 0.0, 0.4, 0.8, 1.5, 4.0], dtype=torch.float64)
    x = v.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(gpo.LOSSES[name], (x,))


def test_exponential_cap_is_finite_tangent_and_warns_once():
    v = torch.tensor([-1e4, -EXP_CAP - 1.0, 0.0], requires_grad=True)
    with pytest.warns(RuntimeWarning, match="exponent above"):
        out = exponential(v)
    e_c = math.exp(EXP_CAP)
    assert out[0].item() == pytest.approx(e_c * (1 + 1e4 - EXP_CAP), rel=1e-5)
    assert out[1].item() == pytest.approx(e_c * 2.0, rel=1e-5)
    out.sum().backward()
    assert torch.isfinite(v.grad).all()
    assert v.grad[0].item() == pytest.approx(-e_c, rel=1e-5)  # still pushes v up
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exponential(torch.tensor([-1e3]))  # second time: no warning


def test_gpo_loss_matches_f_of_beta_rho():
    rho = torch.tensor([-3.0, -0.1, 0.0, 0.7, 12.0], dtype=torch.float64)
    for name, loss in gpo.LOSSES.items():
        out = gpo.gpo_loss(name, rho, beta=0.3)
        torch.testing.assert_close(out, loss.fn(0.3 * rho)), name


def test_half_precision_is_upcast():
    rho = torch.tensor([0.5, -2.0], dtype=torch.bfloat16)
    out = gpo.gpo_loss("logistic", rho, beta=1.0)
    assert out.dtype == torch.float32


def test_user_callable_and_dotted_path():
    rho = torch.linspace(-3, 3, 7)
    by_callable = gpo.gpo_loss(lambda v: torch.nn.functional.softplus(1.0 - v), rho, 2.0)
    by_path = gpo.gpo_loss("user_losses:smooth_hinge", rho, 2.0)
    torch.testing.assert_close(by_callable, by_path)
    assert gpo.resolve_loss("user_losses:smooth_hinge").name == "user_losses:smooth_hinge"
    torch.testing.assert_close(
        gpo.gpo_loss("gpo.losses.family:logistic", rho, 2.0), gpo.gpo_loss("logistic", rho, 2.0)
    )


def test_preference_loss_returns_losses_and_rho():
    pc, pr = torch.tensor([-10.0, -50.0]), torch.tensor([-12.0, -40.0])
    rc, rr = torch.tensor([-11.0, -45.0]), torch.tensor([-11.5, -45.0])
    out = gpo.preference_loss("logistic", pc, pr, rc, rr, beta=0.1)
    expected_rho = torch.tensor([(-10 + 11) - (-12 + 11.5), (-50 + 45) - (-40 + 45)])
    torch.testing.assert_close(out.rho, expected_rho)
    torch.testing.assert_close(out.losses, torch.nn.functional.softplus(-0.1 * expected_rho))


def test_square_is_ipo_with_tau_half_beta():
    """The IPO mapping (GPO paper Table 1): (beta rho - 1)^2 = beta^2 (rho - 1/(2 tau))^2 with
    tau = beta / 2."""
    rho = torch.randn(64, dtype=torch.float64) * 5
    for beta in (0.01, 0.1, 1.0, 7.0):
        tau = beta / 2
        ipo = (rho - 1 / (2 * tau)) ** 2  # IPO written out independently
        torch.testing.assert_close(gpo.gpo_loss("square", rho, beta), beta**2 * ipo)


# --- bad input -------------------------------------------------------------------------------


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError) as e:
        gpo.gpo_loss("sigmoidd", torch.zeros(2), 1.0)
    for name in gpo.LOSSES:
        assert name in str(e.value)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf"), "abc"])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        gpo.gpo_loss("logistic", torch.zeros(2), beta)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rho(bad):
    with pytest.raises(ValueError, match="non-finite"):
        gpo.gpo_loss("hinge", torch.tensor([0.0, bad]), 1.0)


def test_mismatched_shapes():
    a, b = torch.zeros(3), torch.zeros(4)
    with pytest.raises(ValueError, match="same shape"):
        gpo.preference_loss("logistic", a, a, a, b, 1.0)


def test_non_tensor_logps():
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        gpo.preference_loss("logistic", [0.0], torch.zeros(1), torch.zeros(1), torch.zeros(1), 1.0)


@pytest.mark.parametrize("bad", [42, int, "user_losses:not_a_function"])
def test_user_loss_not_a_function(bad):
    with pytest.raises(TypeError, match="must be a function"):
        gpo.resolve_loss(bad)


def test_dotted_path_errors():
    with pytest.raises(ValueError, match="cannot import module"):
        gpo.resolve_loss("no_such_pkg.mod:f")
    with pytest.raises(ValueError, match="has no attribute"):
        gpo.resolve_loss("user_losses:missing")


def test_loss_returning_wrong_shape():
    with pytest.raises(TypeError, match="same shape"):
        gpo.gpo_loss(lambda v: v.sum(), torch.zeros(3), 1.0)


def test_overflow_is_a_clear_error():
    with pytest.raises(ValueError, match="non-finite value"):
        gpo.gpo_loss("square", torch.tensor([1e20]), 1.0)


def test_non_finite_errors_are_typed():
    """Callers catch NonFiniteError (a ValueError), never match message text."""
    with pytest.raises(NonFiniteError):
        gpo.gpo_loss("hinge", torch.tensor([0.0, float("nan")]), 1.0)
    with pytest.raises(NonFiniteError):
        gpo.gpo_loss("square", torch.tensor([1e20]), 1.0)
    inf = torch.tensor([float("inf")])
    with pytest.raises(NonFiniteError):
        gpo.preference_loss("logistic", inf, torch.zeros(1), torch.zeros(1), torch.zeros(1), 1.0)
    with pytest.raises(NonFiniteError):
        gpo.iupo_loss(inf, torch.zeros(1), torch.zeros(1), torch.zeros(1), 1.0, "js")


@pytest.mark.parametrize("objective", ["logistic", "savage", "fdpo:js", "iupo:js", "fipo:alpha"])
def test_unvalidated_path_equals_validated_and_lets_non_finite_through(objective):
    """``validate=False`` (the trainer's hot path) computes the same losses on finite inputs and
    returns non-finite values instead of raising (the trainer's guard checks once per step)."""
    obj = OBJECTIVES[objective]
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    checked = obj(pc, pr, rc, rr, 0.5)
    fast = obj(pc, pr, rc, rr, 0.5, validate=False)
    assert torch.equal(checked.losses, fast.losses) and torch.equal(checked.rho, fast.rho)
    pc = pc.clone()
    pc[2] = float("nan")
    with pytest.raises(NonFiniteError):
        obj(pc, pr, rc, rr, 0.5)
    out = obj(pc, pr, rc, rr, 0.5, validate=False)
    assert torch.isnan(out.losses[2]) and torch.isfinite(out.losses[[0, 1, 3, 4, 5]]).all()


def test_objectives_refuse_a_user_loss_that_increases_at_zero():
    with pytest.raises(ValueError, match=r"f'\(0\) = 1 >= 0.*favours the rejected"):
        resolve_objective("user_losses:increasing")
    with pytest.raises(ValueError, match=r"f'\(0\) = 1 >= 0"):
        resolve_objective(lambda v: torch.exp(v))
    assert resolve_objective("user_losses:smooth_hinge").name == "user_losses:smooth_hinge"
    assert gpo.losses.derivatives_at_zero("square") == (1.0, -2.0, 2.0)
