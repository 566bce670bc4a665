"""Credentials in a sweep's options (a judge URL's ``user:key@``, ``?api_key=``): never in a
child's argv, never in a file in the sweep folder.

``/proc/PID/cmdline`` is readable by every user of a machine, ``/proc/PID/environ`` only by
the process's owner. So `gpo sweep` starts each `gpo train` with these options masked in argv
and their values in :data:`SECRET_OPTIONS_ENV`, which `gpo train` reads. A cluster sweep sends
its runs masked (submitit pickles them into the sweep folder) and the masked -> full values in
the workers' environment (:data:`SWEEP_SECRETS_ENV`: Ray's ``runtime_env``, sbatch's export).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

from gpo.experiments.executors.common import SECRET_OPTIONS_ENV, SWEEP_SECRETS_ENV
from gpo.io import redact_urls, redacted
from gpo.train.config import TrainConfig


def secret_options(tc: TrainConfig) -> dict[str, str]:
    """The options of ``tc`` that hold credentials in a URL (what :func:`redact_urls` masks),
    with their values; a masked value comes back from :data:`SWEEP_SECRETS_ENV` if set."""
    known = json.loads(os.environ.get(SWEEP_SECRETS_ENV) or "{}")
    out = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(tc, f.name)
        if isinstance(value, str):
            value = known.get(value, value)
            if redact_urls(value) != value:
                out[f.name] = value
    return out


def masked_config(tc: TrainConfig, secret: dict[str, str]) -> TrainConfig:
    return dataclasses.replace(tc, **{k: redact_urls(v) for k, v in secret.items()})


def masked_runs(runs: list[Any]) -> tuple[list[Any], dict[str, str]]:
    """``runs`` (dataclasses with ``config`` and ``point``) with credentials masked, and the
    environment that gives them back on a worker: the values, and a judge's key variable."""
    secrets: dict[str, str] = {}
    out = []
    for run in runs:
        secret = secret_options(run.config)
        secrets.update({redact_urls(v): v for v in secret.values()})
        config = masked_config(run.config, secret)
        out.append(dataclasses.replace(run, config=config, point=redacted(run.point)))
    env = {SWEEP_SECRETS_ENV: json.dumps(secrets)} if secrets else {}
    for judge in {r.config.judge for r in runs}:  # e.g. api_key_env=OPENAI_API_KEY
        for name in re.findall(r"api_key_env=(\w+)", judge):
            if name in os.environ:
                env[name] = os.environ[name]
    return out, env


def apply_secret_options() -> dict[str, Any]:
    """For `gpo train`: the options `gpo sweep` passed in the environment (then removed from
    it, so nothing this process starts inherits them)."""
    text = os.environ.pop(SECRET_OPTIONS_ENV, None)
    return json.loads(text) if text else {}
