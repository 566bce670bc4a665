"""Where `gpo sweep` runs its runs besides this machine: Ray (``ray_sweep``) and Slurm
(``slurm_sweep``), with what they share: a run as a task on a worker (``common``), the
pre-build before the fan-out (``prebuild``), the progress lines (``progress``) and credentials
kept out of argv and files (``secrets``). Imports nothing, so neither ray nor submitit loads
until an executor is used."""
