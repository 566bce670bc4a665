import json
import math

import numpy as np
import pytest
import torch

from gpo.cli import main
from gpo.experiments.bandit import (
    BanditConfig,
    mean_ci95,
    parse_pairs,
    record_steps,
    run_bandit,
    sample_batches,
    simulate,
    single_thread,
)
from gpo.losses.family import LOSSES, gpo_loss


def plain_loop(name: str, beta: float, seed: int, cfg: BanditConfig) -> torch.Tensor:
    """One config the textbook way: its own logits and Adam, the 9 sampled pairs gathered, the
    batch mean of f(beta rho) differentiated by autograd through log_softmax. Returns the
    policy probabilities after every step, [steps + 1, n_actions]."""
    pairs = torch.tensor(cfg.pairs) - 1
    log_ref = torch.full((cfg.n_actions,), -math.log(cfg.n_actions), dtype=torch.float64)
    logits = torch.zeros(cfg.n_actions, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=cfg.lr)
    batches = sample_batches(seed, cfg.steps, cfg.batch_size, len(cfg.pairs))
    probs = [torch.softmax(logits.detach(), -1)]
    for t in range(cfg.steps):
        w, lose = pairs[batches[t], 0], pairs[batches[t], 1]
        logp = torch.log_softmax(logits, -1)
        rho = (logp[w] - log_ref[w]) - (logp[lose] - log_ref[lose])
        loss = gpo_loss(name, rho, beta).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        probs.append(torch.softmax(logits.detach(), -1))
    return torch.stack(probs)


def test_vectorised_run_equals_independent_per_config_loops():
    cfg = BanditConfig(
        losses=["logistic", "square", "exponential"],
        betas=[1.0, 10.0],
        steps=300,
        seeds=2,
        seed=7,
        lr=0.05,
        max_points=301,  # every step
    )
    with single_thread():  # tiny tensors: extra threads only add waiting on a busy machine
        trace = simulate(cfg)
        refs = {
            (i, j, s): plain_loop(cfg.losses[i], cfg.betas[j], cfg.seed + s, cfg)
            for i, j, s in [(0, 1, 1), (1, 0, 0), (2, 1, 0), (1, 1, 1)]
        }
    assert trace.steps == list(range(301))
    for (i, j, s), ref in refs.items():
        got = trace.probs[:, i, j, s]
        assert torch.allclose(got, ref, rtol=0, atol=1e-10), (i, j, s, (got - ref).abs().max())
    # The configs really differ (a mix-up of indices would not pass the loop above by chance).
    assert (trace.probs[-1, 0, 1, 0] - trace.probs[-1, 1, 1, 0]).abs().max() > 0.05


def square_minimiser_probs(beta: float) -> np.ndarray:
    """Square loss, total order, pairs drawn uniformly: minimise over x = z1 - z2, y = z2 - z3
    (b x - 1)^2 + (b y - 1)^2 + (b (x + y) - 1)^2. Normal equations: [[2, 1], [1, 2]] (b x, b y)
    = (2, 2), so b x = b y = 2/3 and the logits are (4/(3b), 2/(3b), 0) up to a shift."""
    z = np.array([4 / (3 * beta), 2 / (3 * beta), 0.0])
    return np.exp(z) / np.exp(z).sum()


def test_square_loss_bandit_converges_to_closed_form_minimiser():
    np.testing.assert_allclose(square_minimiser_probs(1.0), [0.5627, 0.2889, 0.1483], atol=1e-4)
    cfg = BanditConfig(losses=["square"], betas=[1.0, 2.0], steps=2000, seeds=4, lr=0.02)
    final = run_bandit(cfg)["final"]["square"]
    for b in cfg.betas:
        got = np.asarray(final[repr(b)]["mean"])
        np.testing.assert_allclose(got, square_minimiser_probs(b), atol=0.02)


def test_cycle_dataset_stays_near_uniform():
    # With (y1,y2), (y2,y3), (y3,y1) the square loss is minimised at equal logits (x = y = 0).
    cfg = BanditConfig(
        losses=["square"], betas=[1.0], steps=1500, seeds=3, lr=0.05, dataset="cycle"
    )
    assert cfg.pairs == [[1, 2], [2, 3], [3, 1]]
    got = np.asarray(run_bandit(cfg)["final"]["square"]["1.0"]["mean"])
    np.testing.assert_allclose(got, [1 / 3] * 3, atol=0.03)


def test_case_one_losses_go_greedy_case_two_stay_close_to_ref():
    # Paper App. A.1 / Fig. 3 at beta = 1 (shortened with a larger learning rate).
    cfg = BanditConfig(betas=[1.0], steps=1000, seeds=2, lr=0.1)
    final = {k: v["1.0"]["mean"][0] for k, v in run_bandit(cfg)["final"].items()}
    assert set(final) == set(LOSSES)
    for name in ("logistic", "exponential", "savage"):
        assert final[name] > 0.97, final
    for name in ("hinge", "truncated_quadratic", "square"):
        assert 0.4 < final[name] < 0.85, final


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["experiment", "bandit", "--steps", "250", "--seeds", "3", "--betas", "1", "10"]
    argv += ["--losses", "logistic", "hinge", "user_losses:smooth_hinge", "--points", "40"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resolved config" in printed
    assert "user_losses:smooth_hinge" in printed and "beta=10.0" in printed
    assert (out / "bandit.png").stat().st_size > 10_000
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["steps"] == 250 and res["config"]["pairs"] == [[1, 2], [2, 3], [1, 3]]
    assert list(res["final"]) == ["logistic", "hinge", "user_losses:smooth_hinge"]
    steps = res["trajectory_steps"]
    assert len(steps) == 40 and steps[0] == 0 and steps[-1] == 250
    for by_beta in res["final"].values():
        assert list(by_beta) == ["1.0", "10.0"]
        for cell in by_beta.values():
            assert sum(cell["mean"]) == pytest.approx(1.0, abs=1e-12)
            assert all(0 <= h < 0.2 for h in cell["ci95"])
            assert cell["mean"][0] > 1 / 3 > cell["mean"][2]  # y1 wins, y3 loses
    for by_beta in res["trajectories"].values():
        for tr in by_beta.values():
            assert len(tr["mean"]) == len(tr["ci95"]) == 40
            np.testing.assert_allclose(tr["mean"][0], [1 / 3] * 3)  # logits start at 0
            np.testing.assert_allclose(np.sum(tr["mean"], axis=1), 1.0, atol=1e-12)


def test_dataset_parsing_and_errors(capsys):
    assert parse_pairs("total_order") == [[1, 2], [2, 3], [1, 3]]
    assert parse_pairs("y1>y2, 2>4") == [[1, 2], [2, 4]]
    assert BanditConfig(dataset="1>2,2>4").n_actions == 4
    for bad in ("1>1", "1<2", "0>1", "nope"):
        with pytest.raises(ValueError):
            parse_pairs(bad)
    assert main(["experiment", "bandit", "--dataset", "2>2", "--steps", "1"]) == 2
    assert capsys.readouterr().err.startswith("gpo: error: bad pair '2>2'")
    assert main(["experiment", "bandit", "--losses", "nope", "--steps", "1"]) == 2
    assert "unknown loss 'nope'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="duplicate"):
        BanditConfig(betas=[1.0, 1.0])


def test_record_steps_and_ci():
    assert record_steps(18_000, 200)[:3] == [0, 90, 181]
    assert len(record_steps(18_000, 200)) == 200 and record_steps(18_000, 200)[-1] == 18_000
    assert record_steps(5, 200) == [0, 1, 2, 3, 4, 5]
    mean, half = mean_ci95(np.array([[0.0], [1.0]]), axis=0)
    assert mean[0] == 0.5
    assert half[0] == pytest.approx(12.7062 * math.sqrt(0.5) / math.sqrt(2), rel=1e-4)
    assert math.isnan(mean_ci95(np.array([[0.3]]), axis=0)[1][0])
