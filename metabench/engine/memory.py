"""Peak memory of a measured stretch of work, on CUDA or CPU, and the heap setting of a process that trains.

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
import os
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

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)
#: :func:`keep_freed_heap`'s settings: blocks below ``MMAP_MB`` come from the heap, up to ``KEEP_HEAP_MB`` of
#: free memory stays at its top, and it grows ``TOP_PAD_MB`` beyond each request (virtual: pages count as
#: resident only once written).
MMAP_MB, KEEP_HEAP_MB, TOP_PAD_MB = 32, 1024, 64


def keep_freed_heap() -> bool:
    """Let glibc keep freed memory in this process's heap for reuse. By default glibc hands the top of the heap
    back to the kernel once more than 128 KiB (or twice the largest freed mmap'd block) of it is free, and
    serves large blocks with fresh mmaps; a meta-training step allocates and frees activations of a few MiB
    hundreds of times, and each comes back as zeroed pages, page-faulted in again. With blocks up to 32 MiB
    from the heap and 1 GiB kept, MAML's per-task loop meta-trained 1.09x (1 query per class) and 1.15x (15)
    as fast and adapted 1.1-1.2x as fast on a 2-core CPU, Meta-SGD 0.96-1.07x (``benchmarks/heap_ab.py``,
    ``benchmarks/results/README.md``); values do not change. Called where a process sets up to run
    or time work (the command line, executor and sealed workers); ``METABENCH_KEEP_HEAP=0`` leaves glibc's
    default. :func:`reset_peak` still hands kept memory back before a measurement. Returns whether the setting
    took (glibc only)."""
    if _LIBC is None or not hasattr(_LIBC, "mallopt") or os.environ.get("METABENCH_KEEP_HEAP", "1") == "0":
        return False
    return all(_LIBC.mallopt(param, mb << 20) for param, mb in
               ((_M_MMAP_THRESHOLD, MMAP_MB), (_M_TRIM_THRESHOLD, KEEP_HEAP_MB), (_M_TOP_PAD, TOP_PAD_MB)))


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
