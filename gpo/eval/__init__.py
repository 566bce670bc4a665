"""Evaluation: offline pair metrics, on-policy KL, win rate and the pairwise judges.

- :mod:`gpo.eval.pairs`: per-pair values (rho, rewards, mu-weighted squared loss) and their
  means, for training logs and held-out pairs.
- :mod:`gpo.eval.kl`: Monte Carlo ``KL(pi_theta || pi_ref)`` from the policy's own samples.
- :mod:`gpo.eval.win_rate`: the one win-rate computation (judge, validate, mean and SE), and the
  per-evaluation win rate against a fixed opponent.
- :mod:`gpo.eval.judges`: the judge registry (gold, local, http); ``judge_local``,
  ``judge_http``, ``judge_server`` (the OpenAI-compatible test server).

Imports ``gpo.models``, ``gpo.data``, ``gpo.losses``, ``gpo.gold`` and the shared helpers;
never ``gpo.train``.
"""
