"""``metabench bench``: throughput of meta-training steps and test-time adaptation, per execution path.

Each algorithm is built as a run would build it and fed fixed synthetic meta-batches: meta-training
batches with ``train_queries`` query images per class, adaptation episodes with ``queries``. After
``warmup`` untimed calls, ``repeats`` calls of ``train_step`` and of ``predict`` are timed one by one (the
device is synchronised around each) and the medians are reported. An algorithm with a ``path`` option is
timed on its per-task reference loop (``loop``) and on ``batched``; the ``auto`` row repeats the numbers of
the path ``auto`` resolves to on this device. ``speedup_vs_reference`` is meta-training throughput
relative to the ``loop`` row of the same algorithm, measured in the same invocation.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from metabench.engine import memory
from metabench.names import merge_variant_options
from metabench.contracts import Algorithm, EpisodeBatch, RunContext
from metabench.seeding import derive_seed, make_generator

def synthetic_batch(tasks: int, ways: int, shots: int, queries: int, image_shape: tuple[int, int, int],
                    device: torch.device) -> EpisodeBatch:
    """A seeded meta-batch of random images in [0, 1] with class-major labels."""
    g = make_generator(derive_seed("bench"), "cpu")
    y = torch.arange(ways)

    def labels(per_class: int) -> torch.Tensor:
        return y.repeat_interleave(per_class).repeat(tasks, 1).to(device)

    return EpisodeBatch(torch.rand(tasks, ways * shots, *image_shape, generator=g).to(device), labels(shots),
                        torch.rand(tasks, ways * queries, *image_shape, generator=g).to(device), labels(queries),
                        ways)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def resolve_algorithms(algorithms: Sequence[str | type[Algorithm]] | None) -> list[type[Algorithm]]:
    """Algorithm classes for names (looked up in one plugin discovery) or classes (kept); ``None``: every
    installed algorithm with execution paths (an option ``path``: the gradient-based learners)."""
    if algorithms is not None and all(isinstance(a, type) for a in algorithms):
        return list(algorithms)
    from metabench.engine.registry import discover

    reg = discover()
    if algorithms is None:
        return [p.cls for p in reg.all() if p.kind == "algorithm" and "path" in p.cls.defaults]
    return [a if isinstance(a, type) else reg.get("algorithm", a).cls for a in algorithms]


def time_algorithm(cls: type[Algorithm], device: torch.device, batch: EpisodeBatch, eval_batch: EpisodeBatch,
                   queries: int, repeats: int, warmup: int,
                   options: dict[str, Any] | None = None) -> dict[str, float]:
    """Median meta-training tasks/s on ``batch``, adaptation ms/task on ``eval_batch`` and the peak memory
    (:mod:`metabench.engine.memory`) of one configured algorithm."""
    shots = batch.support_x.shape[1] // batch.ways
    ctx = RunContext(device, derive_seed("bench", cls.name), batch.ways, shots, queries,
                     tuple(batch.support_x.shape[2:]), cls.resolve_options(options))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    memory.reset_peak(device)
    alg = cls()
    alg.setup(ctx)
    step = iter(range(10**9))
    train_s = _median_seconds(lambda: alg.train_step(batch, next(step)), device, repeats, warmup)
    adapt_s = _median_seconds(
        lambda: alg.predict(eval_batch.support_x, eval_batch.support_y, eval_batch.query_x, eval_batch.ways),
        device, repeats, warmup)
    return {"meta_train_tasks_per_s": batch.tasks / train_s, "adapt_ms_per_task": 1000 * adapt_s / batch.tasks,
            "peak_mem_mb": memory.peak_mb(device)}


def run_bench(algorithms: Sequence[str | type[Algorithm]], device: torch.device | str, ways: int = 5,
              shots: int = 1, queries: int = 15, meta_batch: int = 32, repeats: int = 5, warmup: int = 2,
              image_shape: tuple[int, int, int] = (1, 28, 28),
              options: dict[str, dict[str, Any]] | None = None,
              train_queries: int | None = None) -> list[dict[str, Any]]:
    """One row per (algorithm, path): the keys ``algorithm``, ``path``, ``device``, ``ways``, ``shots``,
    ``queries``, ``train_queries``, ``meta_batch``, ``meta_train_tasks_per_s``, ``adapt_ms_per_task``,
    ``peak_mem_mb`` and ``speedup_vs_reference`` (``None`` for algorithms without a ``path`` option);
    ``auto`` rows also carry ``resolves_to``.

    Meta-training steps see ``train_queries`` query images per class (default ``shots``: the K-shot,
    K-query meta-training batches of the MAML reference code for Omniglot); adaptation is timed on
    episodes with ``queries`` per class. ``options`` maps an algorithm name to extra options."""
    from metabench.toolkit.inner_loop import resolve_path

    device = torch.device(device)
    train_queries = shots if train_queries is None else train_queries
    batch = synthetic_batch(meta_batch, ways, shots, train_queries, image_shape, device)
    eval_batch = synthetic_batch(meta_batch, ways, shots, queries, image_shape, device)
    rows: list[dict[str, Any]] = []
    for cls in resolve_algorithms(algorithms):
        extra = dict((options or {}).get(cls.name, {}))
        base = {"algorithm": cls.name, "device": str(device), "ways": ways, "shots": shots, "queries": queries,
                "train_queries": train_queries, "meta_batch": meta_batch, "options": extra}

        def measure(opts: dict[str, Any]) -> dict[str, float]:
            return time_algorithm(cls, device, batch, eval_batch, queries, repeats, warmup, opts)

        if "path" not in cls.defaults:
            rows.append({**base, "path": "-", **measure(extra), "speedup_vs_reference": None})
            continue
        measured = {p: measure({**extra, "path": p}) for p in ("loop", "batched")}
        ref = measured["loop"]["meta_train_tasks_per_s"]
        for p, m in measured.items():
            rows.append({**base, "path": p, **m, "speedup_vs_reference": m["meta_train_tasks_per_s"] / ref})
        auto = resolve_path("auto", device)
        rows.append({**base, "path": "auto", **measured[auto], "resolves_to": auto,
                     "speedup_vs_reference": measured[auto]["meta_train_tasks_per_s"] / ref})
    return rows


def time_generators(generators: Sequence[str], dataset: str, device: torch.device | str, ways: int = 5,
                    shots: int = 1, queries: int = 15, meta_batch: int = 32, repeats: int = 20,
                    warmup: int = 3, data_root: Path | None = None, cache_dir: Path | None = None,
                    options: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per task generator (``name`` or ``name@variant`` with ``options``): the time to set it up on
    ``dataset``'s train split (CACTUs partitions come from the cache when they were built before) and the
    median milliseconds to generate one meta-batch of ``meta_batch`` tasks, synchronised on GPU."""
    from metabench.contracts import DataContext
    from metabench.engine.paths import default_cache_dir, default_data_root
    from metabench.engine.registry import discover

    device, reg = torch.device(device), discover()
    cache_dir = Path(cache_dir or default_cache_dir())
    ds_cls = reg.get("dataset", dataset).cls
    data = ds_cls().load(DataContext(Path(data_root or default_data_root()), cache_dir))
    train = data.split("train").to(device)
    rows = []
    for name in generators:
        cls, opts = reg.resolve("task_generator", name, merge_variant_options(options or {}, name))
        cls = cls.cls
        ctx = RunContext(device, derive_seed("bench", name), ways, shots, queries, data.image_shape, opts, cache_dir,
                         dataset=data.name, augmentation=ds_cls.augmentation)
        gen = cls()
        _sync(device)
        t0 = time.perf_counter()
        gen.setup(train if gen.uses_labels else train.unlabeled(), ctx)
        _sync(device)
        setup_s = time.perf_counter() - t0
        g = make_generator(derive_seed("bench-episodes", name), device)
        sample_s = _median_seconds(lambda: gen.sample(meta_batch, g), device, repeats, warmup)
        rows.append({"generator": name, "dataset": dataset, "device": str(device), "ways": ways, "shots": shots,
                     "queries": queries, "meta_batch": meta_batch, "setup_s": setup_s,
                     "ms_per_meta_batch": 1000 * sample_s})
    return rows
