"""Training: the loop (:mod:`gpo.train.trainer`), its config, guards, checkpoints, eval schedule,
metric tracking and plots.

``from gpo.train.trainer import train`` runs a :class:`gpo.train.config.TrainConfig`. This file
imports nothing, so that reading the config (the CLI's flags) does not load torch.
"""
