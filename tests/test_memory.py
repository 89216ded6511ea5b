"""metabench.engine.memory: the CPU peak follows a measured allocation and restarts after reset_peak."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from metabench.engine import memory
CPU = torch.device("cpu")


def test_peak_follows_an_allocation_and_restarts():
    memory.reset_peak(CPU)
    before = memory.peak_mb(CPU)
    x = torch.ones(256 * 2**20 // 4)  # 256 MiB, written so the pages are resident
    during = memory.peak_mb(CPU)
    assert during >= before + 200
    del x
    if not (Path("/proc/self/clear_refs").exists() and os.access("/proc/self/clear_refs", os.W_OK)):
        pytest.skip("this system cannot restart the peak resident set size")
    memory.reset_peak(CPU)
    assert memory.peak_mb(CPU) < during - 200


@pytest.mark.skipif(memory._LIBC is None or not hasattr(memory._LIBC, "mallopt"), reason="glibc only")
def test_keep_freed_heap_takes_on_glibc_and_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("METABENCH_KEEP_HEAP", "0")
    assert memory.keep_freed_heap() is False
    monkeypatch.delenv("METABENCH_KEEP_HEAP")
    assert memory.keep_freed_heap() is True
    # kept or not, freed memory does not count in the next measurement: reset_peak hands it back first
    blocks = [torch.ones(1 << 20) for _ in range(48)]  # 48 x 4 MiB, written, heap-sized
    in_use = memory.peak_mb(CPU)
    del blocks
    memory.reset_peak(CPU)
    assert memory.peak_mb(CPU) < in_use - 150
