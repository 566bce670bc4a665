import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import gpo
from gpo.losses.numerics import EXP_CAP


def _logps(n=32, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = -20.0 - 10.0 * torch.rand(4, n, generator=g, dtype=torch.float64)
    return tuple(base + scale * torch.randn(4, n, generator=g, dtype=torch.float64))


def _direct_f_prime(name, u, alpha=0.5):
    """f'(u) of each f-divergence (Sun et al. 2024), evaluated on u directly (fine for
    moderate u)."""
    if name == "reverse_kl":
        return torch.log(u) + 1
    if name == "forward_kl":
        return -1 / u
    if name == "js":
        return torch.log(2 * u / (1 + u))
    return (1 - u ** (-alpha)) / alpha


@pytest.mark.parametrize("name", list(gpo.DIVERGENCES))
def test_f_prime_matches_table_formula(name):
    log_u = torch.linspace(-5, 5, 41, dtype=torch.float64)
    torch.testing.assert_close(
        gpo.DIVERGENCES[name].f_prime(log_u), _direct_f_prime(name, torch.exp(log_u))
    )


def test_fdpo_reverse_kl_is_logistic_gpo():
    pc, pr, rc, rr = _logps(scale=50.0)  # differences of hundreds of nats
    for beta in (0.01, 0.5, 10.0):
        f = gpo.fdpo_loss(pc, pr, rc, rr, beta, "reverse_kl")
        g = gpo.preference_loss("logistic", pc, pr, rc, rr, beta)
        torch.testing.assert_close(f.losses, g.losses)
        torch.testing.assert_close(f.rho, g.rho)


@pytest.mark.parametrize("fn", [gpo.iupo_loss, gpo.fipo_loss])
def test_iupo_and_fipo_reverse_kl_are_ipo(fn):
    pc, pr, rc, rr = _logps(scale=50.0)
    for beta in (0.1, 0.5):
        out = fn(pc, pr, rc, rr, beta, "reverse_kl")
        h = (pc - pr) - (rc - rr)  # UPO eq. 9
        torch.testing.assert_close(out.losses, (h - 1 / (2 * beta)) ** 2)


def test_js_iupo_matches_paper_eq26():
    pc, pr, rc, rr = _logps(scale=1.0)
    beta = 0.2
    u_pi, u_ref = torch.exp(pc - pr), torch.exp(rc - rr)
    eq26 = (
        torch.log(2 * u_pi / (u_pi + 1)) - torch.log(2 * u_ref / (u_ref + 1)) - 1 / (2 * beta)
    ) ** 2
    torch.testing.assert_close(gpo.iupo_loss(pc, pr, rc, rr, beta, "js").losses, eq26)


def test_js_fipo_matches_trl_style_formula():
    """TRL's JS logits: l_w - l_l - (softplus(l_w) - softplus(l_l)), l = policy - ref."""
    pc, pr, rc, rr = _logps(scale=2.0)
    beta = 0.1
    lw, ll = pc - rc, pr - rr
    logits = lw - ll - (F.softplus(lw) - F.softplus(ll))
    torch.testing.assert_close(
        gpo.fipo_loss(pc, pr, rc, rr, beta, "js").losses, (logits - 1 / (2 * beta)) ** 2
    )
    torch.testing.assert_close(
        gpo.fdpo_loss(pc, pr, rc, rr, beta, "js").losses, -F.logsigmoid(beta * logits)
    )


def test_iupo_and_fipo_differ_for_js():
    pc, pr, rc, rr = _logps(scale=2.0)
    a = gpo.iupo_loss(pc, pr, rc, rr, 0.1, "js").losses
    b = gpo.fipo_loss(pc, pr, rc, rr, 0.1, "js").losses
    assert (a - b).abs().max() > 1e-2


def test_js_iupo_hundreds_of_nats_is_finite_and_asymptotic():
    # pi(y_w)/pi(y_l) = e^500, pi_ref ratio = e^-500: logsigmoid(500) ~ 0, logsigmoid(-500) ~ -500
    pc, pr = torch.tensor([-100.0]), torch.tensor([-600.0])
    rc, rr = torch.tensor([-600.0]), torch.tensor([-100.0])
    out = gpo.iupo_loss(pc, pr, rc, rr, 0.5, "js")
    assert out.losses.item() == pytest.approx((500.0 - 1.0) ** 2, rel=1e-6)


def test_forward_kl_fdpo_by_hand():
    pc, pr, rc, rr = (torch.tensor([x], dtype=torch.float64) for x in (-10.0, -12.0, -10.5, -11.0))
    u_w, u_l = math.exp(0.5), math.exp(-1.0)
    logits = -1 / u_w + 1 / u_l
    expected = math.log1p(math.exp(-0.3 * logits))
    assert gpo.fdpo_loss(pc, pr, rc, rr, 0.3, "forward_kl").losses.item() == pytest.approx(expected)


def test_alpha_limits():
    pc, pr, rc, rr = _logps(scale=1.0)
    # alpha = 1 (TRL's default): f' = 1 - 1/u, the forward-KL f' plus 1, same f-DPO loss.
    torch.testing.assert_close(
        gpo.fdpo_loss(pc, pr, rc, rr, 0.5, "alpha", alpha=1.0).losses,
        gpo.fdpo_loss(pc, pr, rc, rr, 0.5, "forward_kl").losses,
    )
    # alpha -> 0 approaches reverse KL.
    torch.testing.assert_close(
        gpo.fdpo_loss(pc, pr, rc, rr, 0.5, "alpha", alpha=1e-7).losses,
        gpo.fdpo_loss(pc, pr, rc, rr, 0.5, "reverse_kl").losses,
        rtol=1e-5,
        atol=1e-6,
    )
    # default coefficient 0.5 by name equals an explicit 0.5
    torch.testing.assert_close(
        gpo.fdpo_loss(pc, pr, rc, rr, 0.5, "alpha").losses,
        gpo.fdpo_loss(pc, pr, rc, rr, 0.5, "alpha", alpha=0.5).losses,
    )


@pytest.mark.parametrize("name", ["forward_kl", "alpha"])
def test_cap_is_finite_documented_and_warns_once(name):
    # log u = -500: -exp(500) would overflow; the cap keeps it finite and warns once.
    pc, pr = torch.tensor([-600.0]), torch.tensor([-10.0])
    rc, rr = torch.tensor([-100.0]), torch.tensor([-10.0])
    with pytest.warns(RuntimeWarning, match="continued linearly"):
        out = gpo.iupo_loss(pc, pr, rc, rr, 0.1, name)
    assert torch.isfinite(out.losses).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpo.fdpo_loss(pc, pr, rc, rr, 0.1, name)
    # Below the cap the exact formula holds.
    small = torch.tensor([-(EXP_CAP - 1.0)], dtype=torch.float64)
    expected = _direct_f_prime(name, torch.exp(small))
    torch.testing.assert_close(gpo.DIVERGENCES[name].f_prime(small), expected)


@pytest.mark.parametrize("fn", [gpo.fdpo_loss, gpo.iupo_loss, gpo.fipo_loss])
@pytest.mark.parametrize("name", list(gpo.DIVERGENCES))
def test_gradcheck(fn, name):
    pc, pr, rc, rr = (t[:4].clone() for t in _logps(scale=1.0))
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, rc, rr, 0.3, name).losses, (pc, pr))


@pytest.mark.parametrize("fn", [gpo.fdpo_loss, gpo.iupo_loss, gpo.fipo_loss])
@pytest.mark.parametrize("name", list(gpo.DIVERGENCES))
def test_finite_for_extreme_inputs(fn, name):
    vals = torch.tensor([-1e4, -500.0, -1.0, 0.0])
    pc, pr, rc, rr = (vals.roll(i) for i in range(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fn(pc, pr, rc, rr, 0.1, name)
    assert torch.isfinite(out.losses).all()


def test_bad_divergence_inputs():
    z = torch.zeros(2)
    with pytest.raises(ValueError) as e:
        gpo.fdpo_loss(z, z, z, z, 0.1, "kl")
    for name in gpo.DIVERGENCES:
        assert name in str(e.value)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        gpo.fdpo_loss(z, z, z, z, 0.1, "alpha", alpha=1.5)
    with pytest.raises(ValueError, match="only used with divergence='alpha'"):
        gpo.fdpo_loss(z, z, z, z, 0.1, "js", alpha=0.3)
    with pytest.raises(ValueError, match="beta"):
        gpo.iupo_loss(z, z, z, z, 0.0, "js")
    with pytest.raises(ValueError, match="non-finite"):
        gpo.iupo_loss(z, torch.tensor([0.0, float("nan")]), z, z, 0.1, "js")
    with pytest.raises(ValueError, match="same shape"):
        gpo.fipo_loss(z, z, z, torch.zeros(3), 0.1, "js")


@pytest.mark.parametrize(
    ("family", "beta"), [("fdpo_loss", 1e30), ("iupo_loss", 1.0), ("fipo_loss", 1.0)]
)
def test_f_divergence_losses_refuse_an_overflow_like_gpo_loss(family, beta):
    """Finite inputs whose loss overflows raise NonFiniteError (as gpo_loss does), not inf;
    with validate=False (the trainer) the inf goes on to its guard."""
    from gpo.losses.numerics import NonFiniteError

    t = lambda v: torch.tensor([v])  # noqa: E731
    args = (t(-1e20), t(-1.0), t(-1.0), t(-1.0), beta, "reverse_kl")
    with pytest.raises(NonFiniteError, match=r"gave a non-finite value at beta=.*lower beta"):
        getattr(gpo, family)(*args)
    assert torch.isinf(getattr(gpo, family)(*args, validate=False).losses).all()
