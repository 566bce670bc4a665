"""Time the default ``gpo experiment bandit`` simulation (6 losses x 3 betas x 10 seeds, 18k steps).

    .venv/bin/python bench/bench_bandit.py                # 3 repeats of the vectorised run
    .venv/bin/python bench/bench_bandit.py --naive 6      # also a plain per-config loop

Reports wall and CPU seconds (CPU time is the fairer number when the machine is shared) and the
1-minute load average. ``--naive N`` runs the first N configs one at a time, the textbook way
(own logits and Adam, 9 gathered pairs, autograd through log_softmax), for ``--naive-steps``
steps, and extrapolates to all configs and the full step count.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import torch

from gpo.experiments.bandit import BanditConfig, run_bandit, sample_batches, single_thread
from gpo.losses.family import gpo_loss


def naive_config(cfg: BanditConfig, name: str, beta: float, seed: int, steps: int) -> None:
    pairs = torch.tensor(cfg.pairs) - 1
    logits = torch.zeros(cfg.n_actions, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=cfg.lr)
    batches = sample_batches(seed, steps, cfg.batch_size, len(cfg.pairs))
    for t in range(steps):
        logp = torch.log_softmax(logits, -1)
        rho = logp[pairs[batches[t], 0]] - logp[pairs[batches[t], 1]]  # pi_ref uniform
        loss = gpo_loss(name, rho, beta).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive", type=int, default=0, metavar="N", help="configs to time")
    parser.add_argument("--naive-steps", type=int, default=2000)
    args = parser.parse_args()

    cfg = BanditConfig()
    n_configs = len(cfg.losses) * len(cfg.betas) * cfg.seeds
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    walls, cpus = [], []
    for r in range(args.repeats):
        load = os.getloadavg()[0]
        wall0, cpu0 = time.perf_counter(), time.process_time()
        run_bandit(cfg)
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
        print(
            f"vectorised run {r + 1}: wall {walls[-1]:.2f}s, cpu {cpus[-1]:.2f}s (load {load:.2f})"
        )
    print(
        f"vectorised default run ({n_configs} configs x {cfg.steps} steps): "
        f"wall min {min(walls):.2f}s / median {statistics.median(walls):.2f}s, "
        f"cpu min {min(cpus):.2f}s"
    )

    if args.naive:
        configs = list(itertools.product(cfg.losses, cfg.betas, range(cfg.seeds)))[: args.naive]
        wall0, cpu0 = time.perf_counter(), time.process_time()
        with single_thread():
            for name, beta, s in configs:
                naive_config(cfg, name, beta, cfg.seed + s, args.naive_steps)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        scale = (n_configs / len(configs)) * (cfg.steps / args.naive_steps)
        print(
            f"naive loop: {len(configs)} configs x {args.naive_steps} steps: wall {wall:.2f}s, "
            f"cpu {cpu:.2f}s; extrapolated to the default run: wall {wall * scale:.0f}s, "
            f"cpu {cpu * scale:.0f}s (speed-up x{wall * scale / min(walls):.0f} wall, "
            f"x{cpu * scale / min(cpus):.0f} cpu)"
        )


if __name__ == "__main__":
    main()
