"""glibc's default heap against :func:`metabench.engine.memory.keep_freed_heap`, interleaved: each round runs
``metabench bench`` once with ``METABENCH_KEEP_HEAP=0`` and once with the default, and the ratio of the
median rates over the rounds is printed (and written with ``--json FILE``).

    python benchmarks/heap_ab.py [--algorithms maml,metasgd,fomaml] [--train-queries 1] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def bench(algorithms: str, train_queries: int, keep: bool, extra: list[str]) -> list[dict]:
    """The rows of one ``metabench bench --json`` invocation, heap kept or not."""
    env = {**os.environ, "METABENCH_KEEP_HEAP": "1" if keep else "0"}
    out = subprocess.run([sys.executable, "-m", "metabench.commands.cli", "bench", "--algorithms", algorithms,
                          "--train-queries", str(train_queries), "--json", *extra],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algorithms", default="maml,metasgd,fomaml")
    p.add_argument("--train-queries", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--paths", default="grouped", help="paths besides loop and auto")
    p.add_argument("--json", metavar="FILE", help="also write the rows and ratios here")
    a = p.parse_args()
    extra = ["--paths", a.paths, "--repeats", "3"]
    runs: dict[bool, list[list[dict]]] = {False: [], True: []}
    for _ in range(a.rounds):
        for keep in (False, True):
            runs[keep].append(bench(a.algorithms, a.train_queries, keep, extra))
    summary = []
    for i, row in enumerate(runs[True][0]):
        def med(keep: bool, key: str) -> float:
            return statistics.median(r[i][key] for r in runs[keep])
        ratio_train = med(True, "meta_train_tasks_per_s") / med(False, "meta_train_tasks_per_s")
        ratio_adapt = med(False, "adapt_ms_per_task") / med(True, "adapt_ms_per_task")
        summary.append({"algorithm": row["algorithm"], "path": row["path"], "train_queries": a.train_queries,
                        "meta_train_tasks_per_s": {"default_heap": med(False, "meta_train_tasks_per_s"),
                                                   "kept_heap": med(True, "meta_train_tasks_per_s")},
                        "adapt_ms_per_task": {"default_heap": med(False, "adapt_ms_per_task"),
                                              "kept_heap": med(True, "adapt_ms_per_task")},
                        "meta_train_speedup": ratio_train, "adapt_speedup": ratio_adapt})
        print(f"{row['algorithm']:8s} {row['path']:8s} meta-training {ratio_train:.2f}x, adaptation "
              f"{ratio_adapt:.2f}x with the heap kept")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"summary": summary, "rounds": {"default_heap": runs[False], "kept_heap": runs[True]}}, f,
                      indent=1)


if __name__ == "__main__":
    main()
