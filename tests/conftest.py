"""Shared fixtures: the real data root (skips cleanly where it is absent) and a per-session cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# one torch thread per pytest-xdist worker (the README's test command runs one worker per core), else two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


def _real_data_root() -> Path | None:
    for cand in (os.environ.get("METABENCH_DATA"), REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "omniglot-py").is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding ``omniglot-py/``, ``MNIST/raw/`` and ``splits/`` (read-only)."""
    root = _real_data_root()
    if root is None:
        pytest.skip("real data not found: set METABENCH_DATA to a folder with omniglot-py/ and MNIST/")
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A cache shared by the whole test session (decoded tensors are built once)."""
    env = os.environ.get("METABENCH_TEST_CACHE")
    if env:
        Path(env).mkdir(parents=True, exist_ok=True)
        return Path(env)
    return tmp_path_factory.mktemp("metabench-cache")


@pytest.fixture()
def env(tmp_path, cache_dir):
    """``metabench run`` arguments: results in ``tmp_path``, the shared cache, a data root with no data."""
    return ["--results", str(tmp_path / "results"), "--cache-dir", str(cache_dir),
            "--data-root", str(tmp_path / "no-data")]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny tensors (threads only add overhead and contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def f64():
    """float64 as torch's default dtype within the test (agreement tests to round-off)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
