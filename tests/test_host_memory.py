"""`reuse_host_memory`: freed tensors' memory is reused instead of re-faulted every step."""

import subprocess
import sys

import pytest

import gpo.train.trainer
from gpo.train.trainer import Trainer

# Allocates, fills and frees a 64 MB tensor 40 times and prints each cycle's minor page faults
# (a fresh block costs one fault per 4 KB page when filled). With reuse, the heap first grows for
# a few cycles (torch's 64-byte-aligned posix_memalign does not fit an exactly-sized freed block
# until neighbours coalesce: measured 1-9 cycles, and a CI run still grew at cycle 9 of 12), then
# a freed block serves every later cycle.
_CYCLES = """
import resource, sys, torch
from gpo.train.host_memory import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else False
faults = []
for _ in range(40):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 2**20)
    x.fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults)
"""
PAGES = 16 * 2**20 * 4 // 4096


def _faults(mode: str) -> tuple[bool, list[int]]:
    out = subprocess.run(
        [sys.executable, "-c", _CYCLES, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", [int(n) for n in out[1:]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_tensors_are_reused_without_page_faults():
    applied, with_reuse = _faults("reuse")
    _, without = _faults("system")
    assert applied
    assert all(n > 0.9 * PAGES for n in without)  # the default maps and zero-fills every time
    assert all(n < 0.01 * PAGES for n in with_reuse[-10:]), with_reuse


@pytest.mark.parametrize("reuse", [True, False])
def test_trainer_applies_the_setting_only_when_asked(tiny_config, monkeypatch, reuse):
    calls = []
    monkeypatch.setattr(gpo.train.trainer, "reuse_freed_memory", lambda: calls.append(1) or True)
    Trainer(tiny_config("run", max_steps=1, reuse_host_memory=reuse))
    assert calls == ([1] if reuse else [])
