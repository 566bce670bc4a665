"""KL-targeted training (gpo/train/kl_control.py): the controller on simulated systems, its bounds,
its settings, and a training run that steers beta and resumes exactly."""

from __future__ import annotations

import math
import random

import pytest
import torch

from gpo.train.config import TrainConfig
from gpo.train.kl_control import MAX_ERROR, BetaController, KLTrend, LRBrake, ProxyCalibration
from gpo.train.kl_steering import ROLLBACK, SNAPSHOT, KLSteering, rotating_window


def _controller(target: float, beta: float = 0.1, **kw: float) -> BetaController:
    gains = dict(gain_i=0.3, gain_p=0.5, beta_min=1e-3, beta_max=1e3)
    gains.update(kw)
    return BetaController(target=target, beta=beta, **gains)


def test_error_is_the_clipped_log_ratio_above_a_floor():
    c = _controller(2.0)
    assert c.error(2.0) == 0.0
    assert c.error(4.0) == pytest.approx(math.log(2))
    assert c.error(1e6) == MAX_ERROR and c.error(1e-9) == pytest.approx(math.log(0.1))
    # below a tenth of the target (Monte Carlo noise near pi_ref): not told apart
    assert c.error(0.0) == c.error(-0.3) == c.error(0.2) == pytest.approx(math.log(0.1))
    assert c.error(0.05, target=0.1) == 0.0  # the ramp's first aimed-at KLs, likewise


def test_update_by_hand():
    """log beta <- log beta + gain_i * e * (1 + |e| / 2) * dt + gain_p * (e - e_prev)."""
    c = _controller(1.0, beta=0.1)
    c.update(math.e**0.5)  # e = 0.5, no previous error
    first = 0.3 * 0.5 * 1.25
    assert c.beta == pytest.approx(0.1 * math.exp(first))
    c.update(math.e**-0.2, dt=0.5)  # e = -0.2, change -0.7
    second = 0.3 * -0.2 * 1.1 * 0.5 + 0.5 * (-0.2 - 0.5)
    assert c.beta == pytest.approx(0.1 * math.exp(first + second))
    assert c.updates == 2 and c.last_error == pytest.approx(-0.2)


def test_the_slew_grows_with_the_error():
    """A KL 10x the target moves log beta ~20x as far as one 1.25x; a linear slew: 10x."""
    changes = []
    for kl in (1.25, 10.0):
        c = _controller(1.0, beta=0.1, gain_p=0.0)
        changes.append(math.log(c.update(kl) / 0.1))
    assert changes[1] / changes[0] > 1.8 * math.log(10) / math.log(1.25)


def test_damping_is_not_divided_over_the_steps_between_measurements():
    """Proxy mode updates every step with dt = 1 / kl_control_steps. The proportional-on-change
    term telescopes over those steps to gain_p x (the error's change): it used to be divided by
    kl_control_steps with the rest of the update (10x too weak a damping at the default 10)."""
    c = _controller(1.0, beta=1.0, gain_i=0.0, gain_p=0.5)
    c.update(1.0, 0.1)  # e = 0
    for e in [0.1 * k for k in range(1, 11)]:  # the error rises to 1 over 10 steps
        c.update(math.exp(e), 0.1)
    assert math.log(c.beta) == pytest.approx(0.5 * 1.0)


def test_the_integral_runs_at_the_pace_of_the_braked_learning_rate():
    """Anti-windup: a KL above its target with the learning rate braked to 1% hardly winds beta
    up (it used to climb towards kl_beta_max while the brake held the KL)."""
    braked, free = _controller(1.0, gain_p=0.0), _controller(1.0, gain_p=0.0)
    for _ in range(20):
        braked.update(2.0, pace=0.01)
        free.update(2.0)
    assert braked.beta < 0.11 and free.beta > 10
    assert math.log(braked.beta / 0.1) == pytest.approx(0.01 * math.log(free.beta / 0.1))


def test_a_policy_farther_than_the_target_raises_beta_and_nearer_lowers_it():
    far, near = _controller(1.0), _controller(1.0)
    assert far.update(5.0) > 0.1 and near.update(0.2) < 0.1


def test_nan_measurement_leaves_beta_alone():
    c = _controller(1.0)
    assert c.update(float("nan")) == 0.1 and c.updates == 0


def test_beta_stays_within_its_bounds():
    rng = random.Random(0)
    c = _controller(3.0, beta=1.0, gain_i=5.0, gain_p=5.0, beta_min=0.01, beta_max=100.0)
    for _ in range(500):
        c.update(rng.choice([0.0, -1.0, 1e9, rng.lognormvariate(0, 3)]))
        assert 0.01 <= c.beta <= 100.0


def _settle(kl_of_beta, target: float, beta: float, seed: int, updates: int = 30) -> list[float]:
    """Drive a simulated system with the default gains: each update the KL moves 30% of the
    way towards its equilibrium ``kl_of_beta(beta)`` (KL lags beta), measured with 20%
    log-normal noise. Returns the true KL after each update."""
    d = TrainConfig()
    c = _controller(target, beta=beta, gain_i=d.kl_gain_i, gain_p=d.kl_gain_p)
    rng, kl, seen = random.Random(seed), 0.0, []
    for _ in range(updates):
        kl += 0.3 * (kl_of_beta(c.beta) - kl)
        seen.append(kl)
        c.update(kl * rng.lognormvariate(0, 0.2))
    return seen


def test_controller_reaches_the_target_of_lagging_noisy_systems():
    """Two responses, both far from every target at their start: IPO-like (equilibrium KL
    0.3 / beta^2) from beta 0.1 (KL 30), and ``3 / beta`` from beta 100 (KL 0.03: the policy
    barely moves). Over 20 noise seeds x targets {1, 3, 10} x both: >= 90% end within 25% of
    the target after 30 updates, and half are there for good within 20 updates."""
    ends, settled = [], []
    for target in (1.0, 3.0, 10.0):
        for seed in range(20):
            for response, beta in ((lambda b: 0.3 / b**2, 0.1), (lambda b: 3.0 / b, 100.0)):
                kls = _settle(response, target, beta, seed)
                off = [i for i, k in enumerate(kls) if abs(k / target - 1) >= 0.25]
                ends.append(not off or off[-1] < len(kls) - 1)
                settled.append(off[-1] + 1 if off else 0)
    assert sum(ends) >= 0.9 * len(ends), sum(ends)
    assert sorted(settled)[len(settled) // 2] <= 20, sorted(settled)


def test_lr_brake_by_hand():
    """log scale <- min(0, log scale - gain * e), e = clip(log(KL / target), -1, 1)."""
    b = LRBrake(target=2.0, gain=1.0)
    assert b.update(1.0) == 1.0  # below the target: never above the full learning rate
    assert b.update(4.0) == pytest.approx(0.5)  # e = log 2
    assert b.update(4.0, scale=0.5) == pytest.approx(0.5 * 2**-0.5)
    assert b.update(float("nan")) == pytest.approx(0.5 * 2**-0.5)
    assert b.update(1.0) == pytest.approx(2**-0.5)  # recovers below the target
    assert b.update(1e-9) == 1.0  # ... up to 1
    off = LRBrake(target=2.0, gain=0.0)
    assert off.update(100.0) == 1.0


def test_lr_brake_slows_a_drift_that_beta_cannot_hold():
    """A one-sided loss in its third epoch (docs/kl-control.md), simulated: from the target on,
    the KL grows by 0.025 x lr scale per step whatever beta is (as cpu-kl's misses did, ~0.024
    per step); the brake sees the proxy-mode signal (20% log-normal noise, smoothed with
    weight 0.2) every step at a tenth of its gain. Unbraked, 50 steps end 62% over the target;
    the default brake cuts the mean overshoot to below 0.8x that (0.72x at gain 1) and
    leaves the learning rate below half. The real runs do better, since beta acts too
    (cpu-kl: docs/kl-control.md)."""
    gain = TrainConfig().kl_lr_gain
    assert gain > 0  # on by default

    def run(gain: float, seed: int) -> tuple[float, float]:
        brake, rng, kl, signal = LRBrake(target=2.0, gain=gain), random.Random(seed), 2.0, None
        for _ in range(50):
            kl += 0.025 * brake.scale
            measured = kl * rng.lognormvariate(0, 0.2)
            signal = measured if signal is None else signal + 0.2 * (measured - signal)
            brake.update(signal, scale=0.1)
        return kl, brake.scale

    assert run(0.0, 0) == (pytest.approx(3.25), 1.0)
    braked = [run(gain, seed) for seed in range(20)]
    overshoot = sum(kl - 2.0 for kl, _ in braked) / len(braked)
    assert overshoot < 0.8 * 1.25, overshoot
    assert all(scale < 0.5 for _, scale in braked)


def test_during_the_ramp_the_brake_acts_only_on_a_kl_on_course_past_the_target():
    """Adam's first steps overshoot the ramp, and beta corrects that: a KL ahead of the ramp
    but flat below the target leaves the learning rate alone until the ramp ends (a brake
    there froze runs early). A KL rising to pass the target by the ramp's end is braked."""
    cfg = TrainConfig(kl_target=2.0, kl_control_steps=2, kl_ramp=0.5, max_steps=20)
    flat, rising = KLSteering(cfg, n_prompts=10), KLSteering(cfg, n_prompts=10)
    ahead = [flat.after_step(s, 1.0, lambda i, s: (1.5, 0.05))["kl_control/lr_scale"]
             for s in range(1, 10)]  # fmt: skip
    assert ahead == [1.0] * 9
    course = [rising.after_step(s, 1.0, lambda i, s: (0.3 * s, 0.05))["kl_control/lr_scale"]
              for s in range(1, 10)]  # fmt: skip
    assert course[-1] < 1.0


def test_proxy_calibration_scales_the_running_mu_weighted_loss():
    p = ProxyCalibration()
    assert p.estimate() is None
    p.observe_batch(2.0)
    p.calibrate(0.0)  # a KL of ~0 cannot set a ratio
    assert p.estimate() is None
    p.calibrate(1.0)
    assert p.estimate() == pytest.approx(1.0)  # ratio 0.5
    p.observe_batch(4.0)  # running mean 2 + 0.2 * (4 - 2) = 2.4
    assert p.mu_sq == pytest.approx(2.4) and p.estimate() == pytest.approx(1.2)
    p.observe_batch(float("inf"))
    assert p.mu_sq == pytest.approx(2.4)


def test_rotating_window_walks_over_every_prompt():
    assert rotating_window(10, 4, 0) == [0, 1, 2, 3]
    assert rotating_window(10, 4, 2) == [8, 9, 0, 1]
    assert rotating_window(3, 8, 5) == [0, 1, 2]  # fewer prompts than asked: all of them
    seen = set()
    for k in range(5):
        seen |= set(rotating_window(10, 4, k))
    assert seen == set(range(10))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kl_target": 0.0}, "kl_target"),
        ({"kl_target": -1.0}, "kl_target"),
        ({"kl_target": float("nan")}, "kl_target"),
        ({"kl_target": float("inf")}, "kl_target"),
        ({"kl_target": 1.0, "kl_control_steps": 0}, "kl_control_steps"),
        ({"kl_target": 1.0, "kl_control_prompts": 0}, "kl_control_prompts"),
        ({"kl_target": 1.0, "kl_gain_i": float("nan")}, "kl_gain_i"),
        ({"kl_target": 1.0, "kl_lr_gain": -0.1}, "kl_lr_gain"),
        ({"kl_target": 1.0, "kl_beta_min": 0.0}, "kl_beta_min"),
        ({"kl_target": 1.0, "kl_beta_min": 2.0, "kl_beta_max": 1.0}, "kl_beta_min"),
        ({"kl_target": 1.0, "beta": 5000.0}, "outside"),
        ({"kl_target": 1.0, "kl_samples": 0}, "kl_samples"),
        (
            {"kl_target": 1.0, "eval_fraction": 0.0, "eval_split": None},
            "held-out prompts",
        ),
    ],
)
def test_bad_kl_control_settings_are_refused_by_the_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def _steered(tiny_config, name: str, **kw):
    base = dict(
        kl_target=0.5, kl_control_steps=2, kl_control_prompts=3, kl_samples=2,
        max_new_tokens=4, eval_fraction=0.2, eval_steps=3, kl_prompts=2, max_steps=6,
        learning_rate=1e-2,
    )  # fmt: skip
    return tiny_config(name, **{**base, **kw})


def test_a_steered_run_logs_beta_every_step_and_the_result(tiny_config, tmp_path):
    from gpo.train.tracking import read_metrics
    from gpo.train.trainer import Trainer

    cfg = _steered(
        tiny_config, "run", kl_control_signal="sampled", kl_ramp=0.0, kl_target=0.05,
        lr_scheduler="constant", warmup_ratio=0.0,
    )  # fmt: skip
    summary = Trainer(cfg).run()
    records = read_metrics(tmp_path / "run")
    steered = [r for r in records if "kl_control/beta" in r]
    assert [r["step"] for r in steered] == [1, 2, 3, 4, 5, 6]
    measured = [r for r in steered if "kl_control/kl" in r]
    # 2: due; 3: the evaluation's KL, taken a step early instead of sampling (it would be due
    # at 4); 5: due; 6 is the last step, whose evaluation is the reported KL, not a measurement
    assert [r["step"] for r in measured] == [2, 3, 5]
    assert all("kl_control/kl_se" in r for r in measured)
    evals = {r["step"]: r for r in records if "eval/kl" in r}
    assert "kl_control/rollback_to" not in measured[1]
    assert measured[1]["kl_control/kl"] == evals[3]["eval/kl"]
    assert measured[1]["kl_control/kl_se"] == evals[3]["eval/kl_se"]
    betas = [r["kl_control/beta"] for r in steered]
    assert betas[0] == 0.1 and len(set(betas)) > 1  # steered from its start
    assert betas[3] == betas[2] and betas[5] == betas[4]  # moved only when it measures
    assert summary["kl_target"] == 0.05 and summary["final_beta"] == betas[-1]
    assert summary["kl"] == summary["eval"]["eval/kl"] and summary["kl_se"] > 0
    # the LR brake: each step's learning rate is the constant one times the logged scale
    scales = [r["kl_control/lr_scale"] for r in steered]
    assert min(scales) < 1.0 and max(scales) <= 1.0  # 0.05 nats is soon passed at lr 1e-2
    lrs = {r["step"]: r["learning_rate"] for r in records if "learning_rate" in r}
    for r in steered:  # logged after step s: the rate that step s + 1 trains with
        assert lrs[r["step"]] == pytest.approx(1e-2 * r["kl_control/lr_scale"], rel=1e-12)
    assert summary["final_lr_scale"] == scales[-1]


def test_the_proxy_signal_moves_beta_every_step_once_calibrated():
    """Steps 1-2: no calibration yet, beta waits; step 2 measures KL 1.0 against a running
    mu-weighted loss of 0.5 (ratio 2); from then on each step's estimate drives beta."""
    cfg = TrainConfig(kl_target=4.0, kl_control_steps=2, kl_control_signal="proxy", kl_ramp=0.0)
    steering = KLSteering(cfg, n_prompts=10)
    asked: list[tuple[list[int], int]] = []

    def measure(indices: list[int], step: int) -> tuple[float, float]:
        asked.append((indices, step))
        return 1.0, 0.1

    assert steering.after_step(1, 0.5, measure)["kl_control/beta"] == 0.1
    logged = steering.after_step(2, 0.5, measure)
    assert logged["kl_control/kl"] == 1.0 and logged["kl_control/kl_proxy"] == 1.0
    assert asked == [(list(range(10)), 2)]  # 16 prompts asked, 10 held out: all of them
    # One measurement, no slope yet: KL 1 aimed at 4, e = log(1/4), for half a period.
    e = math.log(0.25)
    assert logged["kl_control/beta"] == pytest.approx(0.1 * math.exp(0.3 * e * (1 - e / 2) / 2))
    betas = [steering.after_step(s, 0.5 * 2**s, measure)["kl_control/beta"] for s in (3, 4)]
    assert betas[0] != logged["kl_control/beta"] and betas[1] != betas[0]
    assert [step for _, step in asked] == [2, 4]  # step 3 moved beta without sampling


def test_apply_takes_the_main_process_values_and_scales_the_learning_rate(monkeypatch):
    """Another process's steering takes beta, brake and action from the main process (the
    broadcast), acts on them and sets each group's rate to the scheduler's times the scale."""
    import types

    import accelerate.utils

    cfg = TrainConfig(kl_target=2.0)
    steering = KLSteering(cfg, n_prompts=4)  # this process's own values: beta 0.1, scale 1
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = types.SimpleNamespace(get_last_lr=lambda: [0.3])
    sent: list[list[float]] = []

    def broadcast(t: torch.Tensor) -> torch.Tensor:  # the main process's values arrive
        sent.append(t.tolist())
        return torch.tensor([0.7, math.log(0.5), float(SNAPSHOT)], dtype=torch.float64)

    monkeypatch.setattr(accelerate.utils, "broadcast", broadcast)
    acc = types.SimpleNamespace(num_processes=2, device="cpu")
    steering.apply(acc, [param], optimizer, scheduler)
    assert sent == [[0.1, 0.0, 0.0]]
    assert steering.beta == 0.7 and steering.lr_scale == pytest.approx(0.5)
    assert steering.action == SNAPSHOT and steering._snapshot is not None  # acted on it
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.3 * 0.5)
    one = types.SimpleNamespace(num_processes=1, device="cpu")  # alone: no broadcast
    steering.apply(one, [param], optimizer, scheduler)
    assert len(sent) == 1 and optimizer.param_groups[0]["lr"] == pytest.approx(0.15)


def test_a_steered_run_without_held_out_prompts_is_refused(tiny_config):
    from gpo.train.trainer import Trainer

    with pytest.raises(ValueError, match="held-out prompts"):
        Trainer(_steered(tiny_config, "run", eval_fraction=0.0))  # the data has no test split


@pytest.mark.slow
def test_stop_and_resume_keeps_the_controller_state(tiny_config, tmp_path):
    """Beta and the controller's memory (last error, proxy calibration) come back exactly: the
    resumed half of the curve equals the uninterrupted one bitwise."""
    from gpo.train.tracking import read_metrics
    from gpo.train.trainer import Trainer

    kw = dict(save_steps=4, max_steps=8, kl_ramp=0.0, kl_target=0.05, eval_steps=8)  # brake on by 4
    Trainer(_steered(tiny_config, "whole", **kw)).run()

    def stop_after_5(step: int, seconds: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(_steered(tiny_config, "cut", **kw), callbacks=[stop_after_5]).run()
    resumed = Trainer(_steered(tiny_config, "cut", resume=True, **kw))
    assert resumed.start_step == 4 and resumed.beta != 0.1
    resumed.run()
    whole, cut = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "cut")
    assert any("kl_control/kl" in r for r in whole if r["step"] > 4)
    assert any(r.get("kl_control/lr_scale", 1) < 1 for r in whole if r["step"] == 4)
    assert cut == whole


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--kl-target", "0"], "kl_target = 0.0 is out of range"),
        (["--kl-target", "nan"], "kl_target = nan is out of range"),
        (["--kl-target", "2", "--beta", "1e4"], "outside [kl_beta_min, kl_beta_max]"),
        (["--kl-target", "2", "--eval-fraction", "0", "--eval-split", "none"], "held-out"),
    ],
)
def test_bad_kl_settings_exit_2_with_one_line_before_any_model_loads(flags, fragment, capsys):
    """The model named does not exist: the error must come from the settings, not the model."""
    from gpo.cli import main

    code = main(["train", "--model", "/nonexistent/model", "--progress", "false", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("gpo: error: ") and "\n" not in err
    assert fragment in err and "nonexistent" not in err


# ------------------------------------------------ the steering on simulated runs (issue 28)


class _Optimizer:
    """What a rollback needs of an optimizer: a state to copy and to load back."""

    def __init__(self) -> None:
        self.state = {"moment": 0.0}

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state)


def _simulate(rate, target: float, beta: float, signal: str, seed: int, steps: int = 120):
    """A run as the controller sees it: each step the KL moves by ``lr_scale * rate(beta, kl)``
    (the KL lives in a one-element tensor: the weights a rollback restores); the batch's
    mu-weighted loss is KL / 2 with 30% log-normal noise; a measurement is the KL with 25%
    log-normal and 0.05 absolute noise. Returns the true final KL and the steering."""
    import torch

    cfg = TrainConfig(kl_target=target, beta=beta, kl_control_signal=signal, max_steps=steps)
    steering, rng = KLSteering(cfg, n_prompts=64), random.Random(seed)
    kl, opt = torch.zeros(1, dtype=torch.float64), _Optimizer()

    def measure(indices: list[int], step: int) -> tuple[float, float]:
        true = float(kl)
        return true * rng.lognormvariate(0, 0.25) + rng.gauss(0, 0.05), 0.25 * true + 0.05

    for step in range(1, steps + 1):
        kl += steering.lr_scale * rate(steering.beta, float(kl))
        kl.clamp_(min=0.0)
        steering.after_step(step, float(kl) / 2 * rng.lognormvariate(0, 0.3), measure)
        steering.act([kl], opt)
    return float(kl), steering


def _one_sided(beta: float, kl: float) -> float:
    """Adam at a high learning rate: 0.15 nats a step at beta 0.1, never back, and at least
    0.02 a step whatever beta is (only the learning rate can stop it)."""
    return 0.02 + 0.13 * min(1.0, (0.1 / beta) ** 0.5)


def _two_sided(beta: float, kl: float) -> float:
    """IPO-like: the KL relaxes towards 0.3 / beta^2, 10% of the way a step, at most 0.15 nats
    a step either way (Adam's pace)."""
    return max(-0.15, min(0.15, 0.1 * (0.3 / beta**2 - kl)))


@pytest.mark.parametrize("signal", ["proxy", "sampled"])
def test_the_steering_lands_simulated_runs_it_was_not_tuned_on(signal):
    """Fast one-sided drift (1.5 nats per 10 steps at the start: past a 1-nat target before the
    first default measurement) and a two-sided response, targets 1 and 3, start beta 100x too
    small, right-ish and 100x too large, 4 noise seeds: >= 90% end within 25%."""
    ends = []
    for rate in (_one_sided, _two_sided):
        for target in (1.0, 3.0):
            for beta in (0.001, 0.1, 10.0):
                for seed in range(4):
                    kl, _ = _simulate(rate, target, beta, signal, seed)
                    ends.append(abs(kl / target - 1) <= 0.25)
    assert sum(ends) >= 0.9 * len(ends), f"{sum(ends)} / {len(ends)}"


def test_a_clear_overshoot_goes_back_to_the_newest_state_below_the_target():
    import torch

    cfg = TrainConfig(kl_target=1.0, kl_control_signal="sampled", max_steps=100)
    steering = KLSteering(cfg, n_prompts=64)
    script = {2: (0.5, 0.05), 6: (3.0, 0.05)}  # 4 is not measured: the interval doubles
    weights, opt = torch.zeros(1), _Optimizer()
    for step in range(1, 7):
        weights += 1.0
        opt.state["moment"] = float(step)
        logged = steering.after_step(step, 0.1, lambda idx, s: script[s])
        steering.act([weights], opt)
        if step == 2:
            assert steering.action == SNAPSHOT and steering.next_measure == 6
    assert steering.action == ROLLBACK and logged["kl_control/rollback_to"] == 2.0
    assert float(weights) == 2.0 and opt.state == {"moment": 2.0}  # as after step 2
    # the rate seen (0.6 nats a step) against the one allowed (0.5 nats over half of 94 steps)
    assert 0.01 <= steering.lr_scale < 0.05 and steering.rollbacks == 1
    assert steering.next_measure == 8  # measured again soon


def test_measurements_come_often_while_the_kl_moves_and_rarely_once_settled():
    cfg = TrainConfig(kl_target=2.0, kl_control_steps=10, kl_control_min_steps=2)
    steering = KLSteering(cfg, n_prompts=64)
    band = 0.5 * cfg.kl_tolerance * 2.0  # 0.25 nats
    assert steering.interval(band / 3, last=10) == 3  # moves the band in 3 steps
    assert steering.interval(10.0, last=10) == 2  # never more often than min_steps
    assert steering.interval(0.0, last=2) == 4  # flat: the interval doubles ...
    assert steering.interval(0.0, last=8) == 10  # ... up to kl_control_steps
    sizes: list[int] = []
    steering.after_step(2, 0.1, lambda idx, s: sizes.append(len(idx)) or (0.0, 0.05))
    assert sizes == [8]  # 2 steps of a 16-prompt budget per 10 steps: the floor of 8


def test_an_evaluations_kl_replaces_a_measurement_due_soon_and_only_then():
    cfg = TrainConfig(kl_target=2.0, kl_control_steps=10, kl_control_min_steps=2)
    steering = KLSteering(cfg, n_prompts=64)
    sampled: list[int] = []

    def own(idx: list[int], step: int) -> tuple[float, float]:
        sampled.append(step)
        return 0.5, 0.1

    logged = steering.after_step(1, 0.1, own, evaluated=lambda: (0.7, 0.05))  # due at step 2
    assert sampled == [] and (logged["kl_control/kl"], logged["kl_control/kl_se"]) == (0.7, 0.05)
    steering.next_measure = 10
    logged = steering.after_step(5, 0.1, own, evaluated=lambda: (9.0, 0.05))  # due in 5 steps
    assert sampled == [] and "kl_control/kl" not in logged
    steering.after_step(10, 0.1, own)
    assert sampled == [10]


def test_the_trend_is_a_weighted_line_through_the_recent_measurements():
    trend = KLTrend(window=10)
    assert trend.fit(0) is None
    for step in (2, 4, 6, 8):
        trend.add(step, 0.5 + 0.25 * step, 0.1)
    level, slope, se = trend.fit(8)
    assert level == pytest.approx(2.5) and slope == pytest.approx(0.25)
    assert 0 < se < 0.1  # four measurements: tighter than one
    trend.add(30, 1.0, 0.1)  # the window keeps the last 10 steps, and at least two points
    assert trend.steps == [8, 30]
