"""The tasks of a meta-batch on parallel threads, one intra-op thread each, for the CPU.

On a few cores, a Conv-4 step on a small task spends much of its time in kernels too small to split well
across cores; running whole tasks side by side instead keeps every core busy (torch releases the GIL inside its
kernels and runs a CPU backward on the calling thread). Measured with ``benchmarks/task_threads.py``
(2-core CPU, meta-batch 32, two invocations, ``benchmarks/results/README.md``): second-order MAML 1.37-1.64x
the one-thread per-task loop at 1 query per class (1.48-1.85x with the threads on ``grouped``), 1.12-1.24x at 15
queries; with one share per thread in flight (up to twice the memory). The MAML family runs its meta-training
steps through it (option ``task_threads``, :func:`resolve_workers`).

Three rules make it correct and reproducible: each thread runs its own copy of the model, because
``functional_call`` swaps a module's parameters while it runs; each thread sets its own intra-op thread count
(OpenMP keeps it per calling thread: setting it from the caller and back slowed the caller's later work 2x);
and the shares are fixed, contiguous slices of the meta-batch whose gradients are added in order, so the
result does not depend on which thread finishes first.
"""
from __future__ import annotations

import contextvars
import copy
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from metabench.toolkit import inner_loop
from metabench.toolkit.inner_loop import InnerLoop, Params


def resolve_workers(option: int | str, device: torch.device | str) -> int:
    """Threads for option ``task_threads``: an integer >= 1 is kept (1: the caller's thread alone, every core
    inside each operation); ``"auto"`` is one per intra-op thread (``torch.get_num_threads()``) on CPU, so 1
    where the run has one core, and 1 on CUDA (one stream launches every task's kernels already)."""
    if option != "auto":
        if isinstance(option, bool) or not isinstance(option, int) or option < 1:
            raise ValueError(f"task_threads must be 'auto' or an integer >= 1, got {option!r}")
        return option
    return 1 if torch.device(device).type == "cuda" else torch.get_num_threads()


class TaskThreads:
    """A pool of ``workers`` threads, each with its own copy of ``model`` and one intra-op thread."""

    def __init__(self, model: nn.Module, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"task threads must be >= 1, got {workers}")
        self.workers = workers
        self.models = [copy.deepcopy(model) for _ in range(workers)]
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="metabench-task")

    def shares(self, tasks: int) -> list[slice]:
        """Contiguous slices of ``tasks`` tasks, one per worker that has any."""
        edges = [round(i * tasks / self.workers) for i in range(self.workers + 1)]
        return [slice(a, b) for a, b in itertools.pairwise(edges) if b > a]

    def map(self, fn: Callable[[nn.Module, slice], Any], tasks: int) -> list[Any]:
        """``fn(model_copy, share)`` for every share of ``tasks``, on the workers, in the caller's context
        (context variables such as the activation layout), results in share order."""
        def run(model: nn.Module, share: slice) -> Any:
            torch.set_num_threads(1)  # in the worker itself: which pool thread runs a share is not fixed
            return fn(model, share)
        ctx = contextvars.copy_context()
        futures = [self.pool.submit(ctx.copy().run, run, self.models[i], share)
                   for i, share in enumerate(self.shares(tasks))]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stop the worker threads."""
        self.pool.shutdown()


def meta_backward(threads: TaskThreads, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                  query_x: torch.Tensor, query_y: torch.Tensor, cfg: InnerLoop, lrs: Params | None = None,
                  path: str = "loop", chunk: int = 0) -> torch.Tensor:
    """:func:`metabench.toolkit.inner_loop.meta_backward` with the tasks split between ``threads``: the same
    meta-gradient up to round-off, accumulated into the ``.grad`` of ``params`` (and ``lrs``); returns the
    detached per-task losses ``[T]``. Each share backpropagates ``chunk`` of its tasks at a time."""
    tasks = support_y.shape[0]
    meta = {**params, **({f"lr:{k}": v for k, v in lrs.items()} if lrs else {})}

    def share(model: nn.Module, part: slice) -> tuple[dict[str, torch.Tensor | None], torch.Tensor]:
        leaves = {k: v.detach().requires_grad_(v.requires_grad) for k, v in meta.items()}
        own = {k: v for k, v in leaves.items() if not k.startswith("lr:")}
        own_lrs = {k[3:]: v for k, v in leaves.items() if k.startswith("lr:")} or None
        losses = inner_loop.meta_backward(model, own, support_x[part], support_y[part], query_x[part],
                                          query_y[part], cfg, own_lrs, path, chunk)
        weight = (part.stop - part.start) / tasks  # the share's mean loss -> its part of the meta-batch mean
        return {k: None if v.grad is None else v.grad * weight for k, v in leaves.items()}, losses

    outs = threads.map(share, tasks)
    for k, v in meta.items():
        grads = [g[k] for g, _ in outs if g[k] is not None]
        if not grads:
            continue
        total = grads[0]
        for g in grads[1:]:
            total = total + g
        v.grad = total if v.grad is None else v.grad + total
    return torch.cat([losses for _, losses in outs])
