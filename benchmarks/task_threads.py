"""A meta-batch's tasks on parallel Python threads, one intra-op thread each
(:mod:`metabench.toolkit.task_threads`), against one thread that uses every core inside each operation.

Both run the toolkit's :func:`metabench.toolkit.inner_loop.meta_backward` (the threaded one on each thread's
share of the tasks, with its own model copy, shares' gradients added in a fixed order). Reported per (learner,
query count, path): meta-training tasks/s of both, their ratio, the memory a step adds, and the largest
difference between the two meta-gradients relative to each gradient's norm.

    python benchmarks/task_threads.py [--train-queries 1 15] [--paths loop,grouped] [--rounds 3] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from metabench.engine import memory
from metabench.execution.bench import synthetic_batch
from metabench.toolkit import task_threads
from metabench.toolkit.inner_loop import InnerLoop, MetaModel, meta_backward, resolve_chunk
from metabench.toolkit.layout import activation_layout, resolve_channels_last
from metabench.toolkit.task_threads import TaskThreads

LEARNERS = {"maml": InnerLoop(1, 0.4, False), "fomaml": InnerLoop(1, 0.4, True)}


def meta_grad(backward, base, batch, cfg: InnerLoop, path: str) -> dict:
    """The meta-gradient of ``batch`` by ``backward`` (a ``meta_backward``), on fresh leaf copies of ``base``,
    in the default step's layout and chunking."""
    p = {k: v.detach().requires_grad_() for k, v in base.items()}
    with activation_layout(resolve_channels_last("auto", "cpu", path, not cfg.first_order)):
        backward(p, batch.support_x, batch.support_y, batch.query_x, batch.query_y, cfg, None, path,
                 resolve_chunk("auto", path, "cpu"))
    return {k: v.grad for k, v in p.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-queries", type=int, nargs="+", default=[1, 15])
    p.add_argument("--paths", default="loop,grouped")
    p.add_argument("--learners", default="maml,fomaml")
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args()
    memory.keep_freed_heap()
    cores = torch.get_num_threads()
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = MetaModel((1, 28, 28), 5, hidden=64)
    base = {k: v.detach() for k, v in model.named_parameters()}
    threads = TaskThreads(model, cores)
    tasks, rows = a.meta_batch, []

    def one_thread(batch, cfg, path):
        return meta_grad(lambda *args: meta_backward(model, *args), base, batch, cfg, path)

    def threaded(batch, cfg, path):
        return meta_grad(lambda *args: task_threads.meta_backward(threads, *args), base, batch, cfg, path)

    for tq in a.train_queries:
        batch = synthetic_batch(tasks, 5, 1, tq, (1, 28, 28), cpu)
        for name in a.learners.split(","):
            cfg = LEARNERS[name]
            for path in a.paths.split(","):
                ref, got = one_thread(batch, cfg, path), threaded(batch, cfg, path)
                diff = max(float((ref[k] - got[k]).norm() / ref[k].norm()) for k in ref
                           if float(ref[k].norm()) > 1e-3)  # conv biases before batch norm: zero up to round-off
                times: dict[str, list[float]] = {"one": [], "threads": []}
                mems: dict[str, list[float]] = {"one": [], "threads": []}
                for _ in range(a.rounds):
                    for key, fn in (("one", one_thread), ("threads", threaded)):
                        memory.reset_peak(cpu)  # memory in a call of its own: the trim costs page faults after it
                        start = memory.peak_mb(cpu)
                        fn(batch, cfg, path)
                        mems[key].append(memory.peak_mb(cpu) - start)
                        best = float("inf")
                        for _ in range(2):  # the faster of two calls on the warm heap
                            t0 = time.perf_counter()
                            fn(batch, cfg, path)
                            best = min(best, time.perf_counter() - t0)
                        times[key].append(best)
                one, thr = statistics.median(times["one"]), statistics.median(times["threads"])
                row = {"learner": name, "train_queries": tq, "path": path, "threads": cores,
                       "one_thread_tasks_per_s": round(tasks / one, 2), "threads_tasks_per_s": round(tasks / thr, 2),
                       "speedup": round(one / thr, 3), "one_thread_step_mb": round(statistics.median(mems["one"]), 1),
                       "threads_step_mb": round(statistics.median(mems["threads"]), 1),
                       "max_relative_grad_difference": diff}
                rows.append(row)
                print(f"{name:7s} {tq:2d} queries {path:8s} one thread {tasks / one:6.1f} tasks/s, {cores} threads "
                      f"{tasks / thr:6.1f} tasks/s ({one / thr:.2f}x); step adds {row['one_thread_step_mb']:.0f} / "
                      f"{row['threads_step_mb']:.0f} MB; gradients differ by {diff:.1e}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
