"""Named sweep configs for `gpo sweep --preset NAME` (a YAML ``--config`` may override keys).

:data:`PRESETS` is the single source of preset names (CLI choices, errors).

- ``cpu-small``: the GPO paper's LM experiments (Figs. 5-7, 9-12) scaled to a 2-core CPU: a tiny
  pi_sft built from the gold task's data (gpo/sft.py), all six GPO losses x beta in
  {0.01, 0.03, ..., 30, 100}, full fine-tuning, 300 steps, the gold judge against pi_sft at
  every eval.
- ``cpu-kl``: KL-targeted training (docs/kl-control.md): the six GPO losses x ``kl_target`` in
  {2, 3, 10} nats x 2 seeds (not 1: no fixed beta up to 100 ends below 1.2-1.9 nats here),
  from the same tiny pi_sft and settings as ``cpu-small`` (beta starts at 0.1 and is steered),
  with the final on-policy KL on 64 prompts x 2 samples. Its fixed-beta frontier is a
  ``cpu-small`` sweep: ``gpo report DIR --frontier CPU_SMALL_DIR``.
- ``paper``: the paper's grid (App. A.3) for GPUs: embedded SmolLM2, all six losses x a log grid
  of beta from 0.01 to 100 x learning rates {1e-5, 3e-5}, constant schedule, batch 32, 20k steps,
  eval every 200 steps for the first 2000 then every 2000. Not run here.
- ``cpu-smol``: the GPO paper's LM experiments on a real pretrained LM: the embedded SmolLM2
  with LoRA (the README's main job's settings: r 16, lr 1e-3, batch 8, 30 steps) on the gold
  task, the six GPO losses x beta in {0.01, 0.1, 1, 10} x seeds {0, 1}; the gold win rate
  against pi_ref on 128 prompts, KL on 32 prompts x 2 and the mu-weighted squared loss at steps
  10, 20 and 30. pi_ref's log-probs and win-rate completions are cached once for the whole
  sweep (``ref_cache``). A pilot (logistic, seed 0) ended at KL 13.5 +- 0.8 nats and win rate
  0.74 at beta 0.01, and at KL 1.9 +- 0.2, win rate 0.55 at beta 10: the grid spans weak to
  strong regularization. One run alone took 177-461 s on 2 cores, median 203 s (two at once
  took 900-1,160 s each), so the 48 runs take about 3 hours; `gpo sweep` resumes where it stopped.
- ``cpu-smol-upo``: the ``upo`` comparison on the same SmolLM2 setup, 2 seeds, with the win rate
  on 64 prompts (as ``upo``); 172-199 s a run measured, about 40 min.
- ``cpu-kl-battery``: KL targets on settings no one tuned the controller on (issue 28,
  docs/kl-control.md): an explicit list of runs (``runs``), see ``_BATTERY``.
- ``upo``: the UPO paper's Fig. 1 (Sun et al. 2024, §5): IPO (``iupo:reverse_kl``) vs JS-IUPO
  (``iupo:js``) at beta in {0.1, 0.2, 0.5}, from the same tiny pi_sft as ``cpu-small``, with
  dense evaluation for the train/eval loss, preference accuracy and reward margin curves.
- ``cpu-smol-sentiment``: ``cpu-smol`` on the sentiment task (issue 30, :mod:`gpo.gold.sentiment`:
  movie-review openings, VADER as the gold reward): the six GPO losses x beta in
  {0.01, 0.1, 1, 10} x seeds {0, 1}, the ``vader`` win rate against pi_ref on 128 held-out
  prompts at steps 10, 20 and 30, whose saved samples give `gpo report` its reward-vs-KL
  frontier (DPO Fig. 2 left). Two runs at once: about 2 hours (docs/results.md).
- ``cpu-smol-online``: online against offline GPO (issue 31, docs/online.md; Tang et al. 2024,
  arXiv 2405.08448, Fig. 1): SmolLM2 LoRA on ``gold-v2`` (the gold reward with a topic-repetition
  term), 200 steps, offline on the built-in pairs and online with the gold judge, logistic and
  square x beta in {0.01, 0.1, 1}, plus IPO-MD (square, mixture 0.5) at beta 0.1, x seeds
  {0, 1}; the gold win rate, KL and held-out accuracy at steps 25, 50, 75, 100, 150, 200. The
  one-seed pilot's offline beta-0.1 run was still gaining win rate at step 200 (0.75 -> 0.89
  from step 100), so the runs are not shorter. Two at once: 42-49 min a run, about 10 hours
  in all (resumable).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from gpo.losses.family import LOSSES

#: Per-run settings shared by the CPU presets (tiny pi_sft, full fine-tuning).
_CPU_BASE: dict[str, Any] = {
    "data": "gold",
    "finetune": "full",
    "learning_rate": 3e-4,
    "lr_scheduler": "constant",
    "warmup_ratio": 0.0,
    "batch_size": 16,
    "max_length": 160,
    "max_steps": 300,
    "logging_steps": 10,
    "eval_schedule": "20:100,50",
    "eval_max_pairs": 200,
    "kl_prompts": 32,
    "kl_samples": 2,
    "judge_prompts": 128,
    "judge": "gold",
    "gold_eval_prompts": 0,  # the last scheduled eval already has the win rate
    "max_new_tokens": 48,
    "save_steps": 100,
    "save_total_limit": 1,
    "save_final": False,
    "report_to": ["none"],
    "progress": False,
}

#: beta from 0.01 to 100, two points per decade (the paper's range).
_LOG_BETAS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]

_CPU_SFT: dict[str, Any] = {"data": "gold", "steps": 400, "hidden": 64, "layers": 2}

#: Per-run settings of the SmolLM2 presets: the README's main job, evaluated three times.
_SMOL_BASE: dict[str, Any] = {
    "model": "smollm2",
    "data": "gold",
    "finetune": "lora",
    "learning_rate": 1e-3,
    "lr_scheduler": "linear",
    "warmup_ratio": 0.1,
    "batch_size": 8,
    "max_steps": 30,
    "logging_steps": 5,
    "eval_steps": 10,
    "eval_max_pairs": 64,
    "kl_prompts": 32,
    "kl_samples": 2,
    "judge_prompts": 128,
    "judge": "gold",
    "gold_eval_prompts": 0,  # the last eval already has the win rate
    "max_new_tokens": 48,
    "ref_cache": "auto",  # one cache of pi_ref log-probs for every run (the same base model)
    "save_steps": 10,  # an interrupted sweep resumes its runs from here
    "save_total_limit": 1,
    "save_final": False,
    "report_to": ["none"],
    "progress": False,
}


#: ``cpu-smol-online`` (issue 31): the main job's settings run for 200 steps on gold-v2, with
#: the win rate, KL and held-out accuracy at steps 25, 50, 75, 100, 150 and 200.
_SMOL_ONLINE: dict[str, Any] = {
    **_SMOL_BASE,
    "data": "gold-v2",
    "max_steps": 200,
    "eval_schedule": "25:100,50",
    "save_steps": 25,
}
#: Offline and online side by side (two at once), the middle beta first; IPO-MD at beta 0.1.
_ONLINE_RUNS: list[dict[str, Any]] = [
    *({"name": f"{mode}-{loss}-beta-{beta:g}", "loss": loss, "beta": beta,
       "online": mode == "online"}
      for beta in (0.1, 1.0, 0.01) for loss in ("logistic", "square")
      for mode in ("offline", "online")),
    {"name": "ipo-md-0.5-square-beta-0.1", "loss": "square", "beta": 0.1, "online": True,
     "online_mixture": 0.5},
]  # fmt: skip


@dataclass(frozen=True)
class Preset:
    help: str
    values: dict[str, Any]


PRESETS: dict[str, Preset] = {
    "cpu-small": Preset(
        "6 GPO losses x 9 betas (0.01-100) from a tiny pi_sft on the gold task; <45 min, 2 cores",
        {
            "base": _CPU_BASE,
            "grid": {"loss": list(LOSSES), "beta": _LOG_BETAS},
            "sft": _CPU_SFT,
            "jobs": 2,
        },
    ),
    "cpu-kl": Preset(
        "6 GPO losses x KL targets {2, 3, 10} nats x 2 seeds, beta steered; ~35 min, 2 cores",
        {
            "base": {**_CPU_BASE, "beta": 0.1, "kl_prompts": 64},
            "grid": {"loss": list(LOSSES), "kl_target": [2.0, 3.0, 10.0], "seed": [0, 1]},
            "sft": _CPU_SFT,
            "jobs": 2,
        },
    ),
    "cpu-smol": Preset(
        "SmolLM2 LoRA on the gold task: 6 GPO losses x betas {0.01, 0.1, 1, 10} x 2 seeds; "
        "~3 h on 2 cores (resumable)",
        {
            "base": _SMOL_BASE,
            "grid": {"loss": list(LOSSES), "beta": [0.01, 0.1, 1.0, 10.0], "seed": [0, 1]},
            # One at a time: a run alone took 220-307 s, two at once 900-1160 s each (2 cores).
            "jobs": 1,
        },
    ),
    "cpu-smol-upo": Preset(
        "IPO vs JS-IUPO at beta 0.1, 0.2, 0.5 x 2 seeds, SmolLM2 LoRA (cpu-smol setup); ~40 min",
        {
            # The win rate on 64 prompts, as the tiny `upo` preset: UPO's claim is about the
            # held-out accuracy and margin, which every eval measures on the same 64 pairs.
            "base": {**_SMOL_BASE, "judge_prompts": 64},
            "grid": {
                "loss": ["iupo:reverse_kl", "iupo:js"],
                "beta": [0.1, 0.2, 0.5],
                "seed": [0, 1],
            },
            "jobs": 1,
        },
    ),
    "cpu-smol-sentiment": Preset(
        "SmolLM2 LoRA on the sentiment task (VADER gold): 6 GPO losses x betas "
        "{0.01, 0.1, 1, 10} x 2 seeds; ~2 h on 2 cores (resumable)",
        {
            "base": {**_SMOL_BASE, "data": "sentiment", "judge": "vader"},
            "grid": {"loss": list(LOSSES), "beta": [0.01, 0.1, 1.0, 10.0], "seed": [0, 1]},
            # Two at once, one thread each: 302-317 s a run (measured on this sweep), against
            # 160-290 s one at a time on both cores (median ~220 s): about 1.4x the throughput.
            "jobs": 2,
        },
    ),
    "cpu-smol-online": Preset(
        "online vs offline GPO on gold-v2, SmolLM2 LoRA, 200 steps: logistic and square x betas "
        "{0.01, 0.1, 1} + IPO-MD, 2 seeds; ~10 h on 2 cores (resumable)",
        {"base": _SMOL_ONLINE, "runs": _ONLINE_RUNS, "grid": {"seed": [0, 1]}, "jobs": 2},
    ),
    "paper": Preset(
        "the GPO paper's grid (App. A.3) on SmolLM2: 6 losses x 9 betas x 2 lrs, 20k steps; GPUs",
        {
            "base": {
                "model": "smollm2",
                "data": "gold",
                "finetune": "full",
                "dtype": "float32",
                "mixed_precision": "bf16",
                "lr_scheduler": "constant",
                "warmup_ratio": 0.0,
                "batch_size": 32,
                "max_steps": 20000,
                "logging_steps": 50,
                "eval_schedule": "200:2000,2000",
                "eval_max_pairs": 200,
                "kl_prompts": 64,
                "kl_samples": 4,
                "judge_prompts": 200,
                "gold_eval_prompts": 0,
                "save_steps": 2000,
                "save_total_limit": 1,
                "report_to": ["tensorboard"],
                "progress": False,
            },
            "grid": {
                "loss": list(LOSSES),
                "beta": _LOG_BETAS,
                "learning_rate": [1e-5, 3e-5],
            },
            "jobs": 1,
        },
    ),
    "upo": Preset(
        "IPO vs JS-IUPO at beta 0.1, 0.2, 0.5 (UPO Fig. 1 analog) from the tiny pi_sft; ~10 min",
        {
            "base": {**_CPU_BASE, "eval_schedule": "20", "judge_prompts": 64},
            "grid": {"loss": ["iupo:reverse_kl", "iupo:js"], "beta": [0.1, 0.2, 0.5]},
            "sft": _CPU_SFT,
            "jobs": 2,
        },
    ),
}

#: ``cpu-kl-battery`` (issue 28): KL targets on settings no one tuned the controller on. The
#: tiny pi_sft at a learning rate 10x cpu-kl's (3e-3, batch 8, 120 steps: the KL can rise
#: faster than one measurement period), every objective, beta 100x off, batch 4 and 32, short
#: runs, targets 1-10 nats, both signals; and SmolLM2 LoRA (the main job) at 2 and 5 nats.
_FAST: dict[str, Any] = {
    **_CPU_BASE,
    "learning_rate": 3e-3,
    "lr_scheduler": "linear",
    "warmup_ratio": 0.1,
    "batch_size": 8,
    "max_steps": 120,
    "beta": 0.1,
    "kl_target": 1.5,
    "eval_schedule": None,
    "eval_steps": 1000,  # the last step only: the final KL
    "kl_prompts": 64,
    "judge_prompts": 0,
    "save_steps": 0,
}
_SMOL_KL: dict[str, Any] = {
    **{k: v for k, v in _SMOL_BASE.items() if k not in ("judge_prompts", "eval_steps")},
    "eval_steps": 1000,
    "kl_prompts": 64,
    "judge_prompts": 0,
    "max_length": 1024,
    "beta": 0.1,
}
_BATTERY: list[dict[str, Any]] = [
    *({"name": f"fast-{loss.replace(':', '-')}", "loss": loss}
      for loss in [*LOSSES, "iupo:js"]),
    {"name": "fast-beta-0.001", "beta": 0.001},
    {"name": "fast-beta-10", "beta": 10.0},
    {"name": "fast-batch-4", "batch_size": 4},
    {"name": "fast-batch-32", "batch_size": 32},
    {"name": "fast-40-steps", "max_steps": 40},
    {"name": "fast-60-steps-square", "max_steps": 60, "loss": "square"},
    {"name": "fast-target-1", "kl_target": 1.0},
    {"name": "fast-target-3", "kl_target": 3.0},
    {"name": "fast-target-10", "kl_target": 10.0},
    {"name": "fast-target-3-square", "kl_target": 3.0, "loss": "square"},
    {"name": "fast-target-5-savage", "kl_target": 5.0, "loss": "savage"},
    {"name": "fast-sampled", "kl_control_signal": "sampled"},
    {"name": "fast-sampled-hinge", "kl_control_signal": "sampled", "loss": "hinge"},
    *({"name": f"smol-{t:g}-{signal}", **_SMOL_KL, "kl_target": t, "kl_control_signal": signal}
      for t in (2.0, 5.0) for signal in ("proxy", "sampled")),
]  # fmt: skip
PRESETS["cpu-kl-battery"] = Preset(
    "KL targets on untuned settings: tiny pi_sft at lr 3e-3 (every objective, beta 100x off, "
    "batch 4/32, short runs, targets 1-10, both signals) and SmolLM2 LoRA at 2 and 5 nats",
    {"base": _FAST, "runs": _BATTERY, "sft": _CPU_SFT, "jobs": 1},
)


def preset_dict(name: str) -> dict[str, Any]:
    """A fresh copy of a preset's sweep config values."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name].values)
