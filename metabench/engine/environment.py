"""What machine and software a run ran on, for the record's ``environment``."""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

import metabench


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: Top-level folders of the checkout that hold what runs produce, not code: a change there (a suite writing its
#: records into the committed ``results/``, a regenerated leaderboard) does not make a run's code ``+dirty``.
OUTPUT_FOLDERS = ("results", "leaderboards")


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the metabench source tree, with ``+dirty`` when it has uncommitted changes outside
    :data:`OUTPUT_FOLDERS`."""
    return commit_of(Path(metabench.__file__).resolve().parent)


def commit_of(folder: Path) -> str | None:
    """``HEAD`` of the git checkout holding ``folder``, ``+dirty`` when a tracked file outside
    :data:`OUTPUT_FOLDERS` has uncommitted changes; None outside a checkout."""
    outputs = [f":(top,exclude){name}" for name in OUTPUT_FOLDERS]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", *outputs],
                               cwd=folder, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def describe(device: torch.device) -> dict:
    """The record's ``environment`` object for a run on ``device``."""
    cuda = device.type == "cuda"
    return {
        "metabench": metabench.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if cuda else None,
        "platform": platform.platform(),
    }
