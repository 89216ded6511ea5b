"""Micro-benchmarks of the inner-loop execution paths (pytest-benchmark; outside ``tests/``, so CI skips them).

    python -m pytest benchmarks/test_bench_inner_loop.py --benchmark-only

Tiny episodes (5-way 1-shot, 5 queries, 4 tasks, Conv-4 with 16 filters on 1x28x28) keep a run short; use
``metabench bench`` for the full-size comparison.
"""
from __future__ import annotations

import pytest
import torch

from metabench.execution.bench import synthetic_batch
from metabench.contracts import RunContext
from metabench_plugins.algorithms.maml import MAML

WAYS, SHOTS, QUERIES, TASKS, SHAPE = 5, 1, 5, 4, (1, 28, 28)


def _maml(path: str, first_order: bool) -> MAML:
    alg = MAML()
    opts = MAML.resolve_options({"path": path, "hidden": 16, "first_order": first_order})
    alg.setup(RunContext(torch.device("cpu"), 0, WAYS, SHOTS, QUERIES, SHAPE, opts))
    return alg


@pytest.fixture(scope="module")
def batch():
    return synthetic_batch(TASKS, WAYS, SHOTS, QUERIES, SHAPE, torch.device("cpu"))


@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("path", ["loop", "batched", "grouped"])
def test_maml_meta_train_step(benchmark, batch, path, first_order):
    alg = _maml(path, first_order)
    benchmark.group = f"maml train_step {'first' if first_order else 'second'} order"
    loss = benchmark(alg.train_step, batch, 0)
    assert loss > 0


@pytest.mark.parametrize("path", ["loop", "batched", "grouped"])
def test_maml_adaptation(benchmark, batch, path):
    alg = _maml(path, False)
    benchmark.group = "maml predict (3 inner steps)"
    logits = benchmark(alg.predict, batch.support_x, batch.support_y, batch.query_x, WAYS)
    assert logits.shape == (TASKS, WAYS * QUERIES, WAYS)
