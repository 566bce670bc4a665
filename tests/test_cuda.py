"""Training on a CUDA device: skipped where there is none (CI has none).

Found on an H200 (2026-12-04): every run on a GPU failed at its first step, because the
prefix-sharing self-check built its plain batch on the CPU (``SharedPromptBatch.unshared``). The
same three runs as the CLI smoke check of that day: offline, online, online IPO-MD with the
token KL estimator, each with a KL and win-rate eval.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from gpo.data.collate import collate_shared
from gpo.data.tokenize import TokenizedPair
from gpo.train.trainer import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

EVALS = {"eval_steps": 2, "kl_prompts": 4}


def test_unshared_keeps_the_batch_on_its_device() -> None:
    pairs = [TokenizedPair(0, [5, 6], [7], [8, 9]), TokenizedPair(1, [5], [7, 7], [9])]
    batch = collate_shared(pairs, 0).to("cuda")
    plain = batch.unshared()
    assert {t.device.type for t in (plain.input_ids, plain.attention_mask)} == {"cuda"}


@pytest.mark.parametrize(
    "extra",
    [{}, {"online": True}, {"online": True, "online_mixture": 0.5, "kl_estimator": "token"}],
    ids=["offline", "online", "ipo-md"],
)
def test_a_run_trains_and_evaluates_on_cuda(tiny_config: Any, extra: dict[str, Any]) -> None:
    cfg = tiny_config("run", loss="square", max_steps=2, max_new_tokens=6, **EVALS, **extra)
    summary = train(cfg)
    assert math.isfinite(summary["train"]["loss"])
    assert summary["steps"] == 2
