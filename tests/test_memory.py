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
