"""Tasks of a meta-batch on parallel threads (:mod:`metabench.toolkit.task_threads`): the meta-gradient of
:func:`~metabench.toolkit.inner_loop.meta_backward` in float64 on every path, reproducible bit for bit, in the
caller's activation layout, and without touching the caller's intra-op thread count."""
from __future__ import annotations

import pytest
import torch

from metabench.toolkit import inner_loop, layout, task_threads
from metabench.toolkit.inner_loop import InnerLoop, MetaModel
from metabench.toolkit.task_threads import TaskThreads

T, N, K, Q, SHAPE = 5, 3, 2, 2, (1, 8, 8)


def _batch():
    g = torch.Generator().manual_seed(3)
    sx, qx = torch.rand(T, N * K, *SHAPE, generator=g), torch.rand(T, N * Q, *SHAPE, generator=g)
    sy = torch.arange(N).repeat_interleave(K).repeat(T, 1)
    qy = torch.arange(N).repeat_interleave(Q).repeat(T, 1)
    return sx, sy, qx, qy


def _grads(fn, model, lrs_on: bool, *args):
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    lrs = {k: torch.full_like(v, 0.3).requires_grad_() for k, v in params.items()} if lrs_on else None
    losses = fn(params, *args, lrs)
    return {k: v.grad for k, v in params.items()}, ({k: v.grad for k, v in lrs.items()} if lrs else {}), losses


@pytest.mark.parametrize("path,chunk", [("loop", 1), ("grouped", 2), ("batched", 0)])
@pytest.mark.parametrize("first_order,lrs_on", [(False, False), (True, False), (False, True)])
def test_threads_give_the_meta_gradient_of_meta_backward(f64, path, chunk, first_order, lrs_on):
    torch.manual_seed(0)
    model = MetaModel(SHAPE, N, hidden=6)
    cfg = InnerLoop(2, 0.3, first_order)
    sx, sy, qx, qy = _batch()
    threads = TaskThreads(model, 2)
    try:
        def plain(p, *rest):
            return inner_loop.meta_backward(model, p, *rest[:4], cfg, rest[4], path, chunk)

        def split(p, *rest):
            return task_threads.meta_backward(threads, p, *rest[:4], cfg, rest[4], path, chunk)
        ref, ref_lrs, ref_losses = _grads(plain, model, lrs_on, sx, sy, qx, qy)
        got, got_lrs, got_losses = _grads(split, model, lrs_on, sx, sy, qx, qy)
    finally:
        threads.close()
    assert threads.shares(T) == [slice(0, 2), slice(2, 5)] or threads.shares(T) == [slice(0, 3), slice(3, 5)]
    torch.testing.assert_close(got_losses, ref_losses, rtol=1e-12, atol=0)
    for mine, theirs in ((got, ref), (got_lrs, ref_lrs)):
        assert mine.keys() == theirs.keys()
        scale = max(float(v.abs().max()) for v in theirs.values()) if theirs else 0.0
        for k in theirs:  # to the gradients' scale: the conv biases' gradients are zero up to round-off
            torch.testing.assert_close(mine[k], theirs[k], rtol=0, atol=1e-10 * scale)


def test_threads_are_reproducible_and_leave_the_callers_thread_count():
    torch.manual_seed(0)
    model = MetaModel(SHAPE, N, hidden=6)
    cfg = InnerLoop(1, 0.4, False)
    sx, sy, qx, qy = _batch()
    before = torch.get_num_threads()
    threads = TaskThreads(model, 3)
    try:
        runs = [_grads(lambda p, *r: task_threads.meta_backward(threads, p, *r[:4], cfg, r[4]), model, False,
                       sx, sy, qx, qy)[0] for _ in range(3)]
        assert len(threads.shares(T)) == 3 and threads.shares(2) == [slice(0, 1), slice(1, 2)]  # no empty share
    finally:
        threads.close()
    assert torch.get_num_threads() == before
    for run in runs[1:]:
        assert all(torch.equal(run[k], runs[0][k]) for k in run)


def test_threads_run_in_the_callers_context():
    threads = TaskThreads(torch.nn.Linear(1, 1), 2)
    try:
        with layout.activation_layout(True):
            inside = threads.map(lambda model, part: (layout.memory_format(), torch.get_num_threads()), 4)
        outside = threads.map(lambda model, part: layout.memory_format(), 4)
    finally:
        threads.close()
    assert inside == [(torch.channels_last, 1)] * 2
    assert outside == [torch.contiguous_format] * 2
    with pytest.raises(ValueError, match="task threads"):
        TaskThreads(torch.nn.Linear(1, 1), 0)


def test_auto_workers_are_one_per_intra_op_thread_on_cpu_and_one_on_cuda():
    before = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            assert task_threads.resolve_workers("auto", "cpu") == n
        assert task_threads.resolve_workers("auto", "cuda") == 1
        assert task_threads.resolve_workers(4, "cuda") == 4
    finally:
        torch.set_num_threads(before)
    for bad in (0, -1, True, 1.5, "many"):
        with pytest.raises(ValueError, match="task_threads"):
            task_threads.resolve_workers(bad, "cpu")
