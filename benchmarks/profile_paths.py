"""Where the execution paths spend a MAML meta-training step: torch.profiler's top operators per path.

    python benchmarks/profile_paths.py [--algorithm maml] [--tasks 8] [--train-queries 15] [--threads 2]

Prints, for each path, the operators with the most self CPU time (CUDA time too on a GPU). Synthetic
Omniglot-sized batches (5-way 1-shot, 28x28); one untimed warm-up step, then one profiled step per path.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from metabench.contracts import RunContext
from metabench.engine import memory
from metabench.execution.bench import resolve_algorithms, synthetic_batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algorithm", default="maml")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--train-queries", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--paths", default="loop,batched,grouped")
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    memory.keep_freed_heap()  # as metabench's command line does
    device = torch.device(a.device)
    (cls,) = resolve_algorithms([a.algorithm])
    batch = synthetic_batch(a.tasks, 5, 1, a.train_queries, (1, 28, 28), device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for path in a.paths.split(","):
        alg = cls()
        alg.setup(RunContext(device, 0, 5, 1, a.train_queries, (1, 28, 28), cls.resolve_options({"path": path})))
        alg.train_step(batch, 0)
        with profile(activities=acts) as prof:
            alg.train_step(batch, 1)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"\n== {a.algorithm} path={path} tasks={a.tasks} train_queries={a.train_queries}")
        print(prof.key_averages().table(sort_by=key, row_limit=a.top))


if __name__ == "__main__":
    main()
