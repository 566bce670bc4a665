"""Where `gpo sweep` runs its runs besides this machine: Ray (``ray_sweep``) and Slurm
(``slurm_sweep``), with what they share (``common``) and the pre-build before the fan-out
(``prebuild``). Imports nothing, so neither ray nor submitit loads until an executor is used."""
