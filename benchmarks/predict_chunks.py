"""Test-time adaptation on ``grouped`` by episodes adapted per call: ms per episode and the memory one call
adds, for an evaluation batch cut into calls of ``T`` episodes, against the default rule
(:func:`metabench.toolkit.inner_loop.predict_chunk`, which bounds the support pixels of one inner step by
``PREDICT_MAX_PIXELS``). Interleaved rounds, best of ``--repeats`` per round, medians over rounds.

    python benchmarks/predict_chunks.py [--configs maml:1:28,maml:5:28,reptile:1:28,maml:1:84]
        [--episodes 48] [--chunks 1,2,4,8,16,48] [--rounds 2] [--json FILE]

A config is ``algorithm:shots:image size`` (5-way, 15 query images per class, one channel, Conv-4).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from metabench.contracts import RunContext
from metabench.engine import memory
from metabench.execution.bench import resolve_algorithms, synthetic_batch
from metabench.toolkit import inner_loop

WAYS, QUERIES = 5, 15


def timed_predict(alg, batch, per_call: int, repeats: int) -> tuple[float, float]:
    """Best ms per episode over ``repeats`` passes over ``batch`` in calls of ``per_call`` episodes (0: one
    call, cut by the default rule), and the peak memory (MiB) the pass added."""
    cpu = torch.device("cpu")
    tasks, best = batch.support_y.shape[0], float("inf")
    step = per_call or tasks
    memory.reset_peak(cpu)
    start = memory.peak_mb(cpu)
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(0, tasks, step):
            alg.predict(batch.support_x[s:s + step], batch.support_y[s:s + step], batch.query_x[s:s + step], WAYS)
        best = min(best, time.perf_counter() - t0)
    return best / tasks * 1e3, memory.peak_mb(cpu) - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="maml:1:28,maml:5:28,reptile:1:28,maml:1:84")
    p.add_argument("--episodes", type=int, default=48)
    p.add_argument("--chunks", default="1,2,4,8,16,48", help="episodes per call, besides the default rule")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", metavar="FILE", help="also write the rows here")
    a = p.parse_args()
    memory.keep_freed_heap()
    default_budget = inner_loop.PREDICT_MAX_PIXELS
    rows = []
    for config in a.configs.split(","):
        name, shots, size = config.split(":")
        (cls,) = resolve_algorithms([name])
        shape = (1, int(size), int(size))
        batch = synthetic_batch(a.episodes, WAYS, int(shots), QUERIES, shape, torch.device("cpu"))
        alg = cls()
        alg.setup(RunContext(torch.device("cpu"), 0, WAYS, int(shots), QUERIES, shape,
                             cls.resolve_options({"path": "grouped"})))
        alg.predict(batch.support_x[:2], batch.support_y[:2], batch.query_x[:2], WAYS)  # warm-up
        settings = [int(c) for c in a.chunks.split(",")] + [0]
        seen: dict[int, list[tuple[float, float]]] = {c: [] for c in settings}
        for _ in range(a.rounds):
            for per_call in settings:
                inner_loop.PREDICT_MAX_PIXELS = default_budget if per_call == 0 else 1 << 62
                seen[per_call].append(timed_predict(alg, batch, per_call, a.repeats))
        inner_loop.PREDICT_MAX_PIXELS = default_budget
        per_step = alg.test_batch if alg.test_loop.minibatches else batch.support_x.shape[1]  # Reptile: minibatches
        rule = inner_loop.predict_chunk(torch.empty(a.episodes, per_step, *shape, device="meta"), False)
        for per_call in settings:
            ms = statistics.median(s[0] for s in seen[per_call])
            mb = statistics.median(s[1] for s in seen[per_call])
            label = f"rule ({rule})" if per_call == 0 else str(per_call)
            rows.append({"algorithm": name, "shots": int(shots), "image_size": int(size), "episodes_per_call": label,
                         "ms_per_episode": round(ms, 2), "memory_added_mb": round(mb, 1)})
            print(f"{name:8s} {shots}-shot {size}px  episodes per call {label:9s} {ms:8.2f} ms/episode "
                  f"{mb:7.1f} MB", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine_threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
