"""Peak memory of a measured stretch of work, on CUDA or CPU.

CUDA: the peak of memory allocated by torch since :func:`reset_peak` (``torch.cuda.max_memory_allocated``).
CPU on Linux: the process's peak resident set size (``VmHWM``) since :func:`reset_peak`, which first hands
freed heap memory back to the system (glibc's ``malloc_trim``) and then writes ``5`` to
``/proc/self/clear_refs`` (Linux >= 4.0) to restart the peak from the current resident size; it counts the
whole process (interpreter, libraries, loaded datasets), not only tensors. Elsewhere, or where the reset
is refused, the process's peak resident set size since it started.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
from pathlib import Path

import torch

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc() if sys.platform.startswith("linux") else None


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory measurement on ``device``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


def peak_mb(device: torch.device) -> float:
    """Peak memory in MiB on ``device`` since :func:`reset_peak` (see the module docstring)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)
