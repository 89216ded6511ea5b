"""``metabench bench``: throughput of meta-training steps and test-time adaptation, per execution path.

Each algorithm is built as a run would build it and fed fixed synthetic meta-batches: meta-training
batches with ``train_queries`` query images per class, adaptation episodes with ``queries``. After
``warmup`` untimed calls, ``repeats`` calls of ``train_step`` and of ``predict`` are timed one by one (the
device is synchronised around each) and the medians are reported, with the peak memory of each (reset before
it). An algorithm with a ``path`` option is timed on its per-task reference loop (``loop``) and on the
other paths asked for, and on ``auto``, timed as its own configuration since it may meta-train and adapt on
different paths (its row names them: ``train_path``, ``predict_path``, and ``resolves_to`` = the training path).
``speedup_vs_reference`` is meta-training throughput relative to the ``loop`` row of the same algorithm,
measured in the same invocation.

Arithmetic rate: the floating-point operations of one ``train_step`` and one ``predict`` are counted once
per algorithm on its ``loop`` path (``torch.utils.flop_counter``, which miscounts the weight gradients of
grouped convolutions, the form ``vmap`` and ``grouped`` compute in), and every path's rate is that count
over its own time: the same work, so the GFLOP/s compare like throughput. ``matmul_fraction`` divides it by
the float32 matrix-multiply rate of the device timed in the same invocation (:func:`matmul_gflops`).
"""
from __future__ import annotations

import contextlib
import platform
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


def matmul_gflops(device: torch.device, repeats: int = 5, warmup: int = 2, n: int | None = None) -> float:
    """The device's float32 matrix-multiply rate in GFLOP/s: median time of an ``n x n`` product (default
    1024 on CPU, 8192 on CUDA), ``2 n^3`` operations."""
    n = n or (8192 if device.type == "cuda" else 1024)
    g = make_generator(derive_seed("bench-matmul"), "cpu")
    a, b = (torch.rand(n, n, generator=g).to(device) for _ in range(2))
    return 2 * n ** 3 / _median_seconds(lambda: a @ b, device, repeats, warmup) / 1e9


def device_name(device: torch.device) -> str:
    """The accelerator's or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def resolve_algorithms(algorithms: Sequence[str | type[Algorithm]] | None,
                       registry: Any = None) -> list[type[Algorithm]]:
    """Algorithm classes for names (looked up in ``registry``, default one plugin discovery) or classes
    (kept); ``None``: every installed algorithm with execution paths (an option ``path``: the gradient-based
    learners)."""
    if algorithms is not None and all(isinstance(a, type) for a in algorithms):
        return list(algorithms)
    from metabench.engine.registry import discover

    reg = registry if registry is not None else discover()
    if algorithms is None:
        return [p.cls for p in reg.all() if p.kind == "algorithm" and "path" in p.cls.defaults]
    return [a if isinstance(a, type) else reg.get("algorithm", a).cls for a in algorithms]


def _build(cls: type[Algorithm], device: torch.device, batch: EpisodeBatch,
           options: dict[str, Any] | None) -> Algorithm:
    """``cls`` set up as a run sets it up for meta-training on ``batch``'s shape (ways, shots, queries)."""
    shots, queries = batch.support_x.shape[1] // batch.ways, batch.query_x.shape[1] // batch.ways
    alg = cls()
    alg.setup(RunContext(device, derive_seed("bench", cls.name), batch.ways, shots, queries,
                         tuple(batch.support_x.shape[2:]), cls.resolve_options(options)))
    return alg


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def graphed_train_step(alg: Algorithm, batch: EpisodeBatch) -> Callable[[], Any]:
    """One whole meta-training step of ``alg`` (the MAML family: ``step_losses`` and an Adam ``opt``) captured
    in a CUDA graph on the fixed ``batch``; returns its replay. Adam is switched to ``capturable``."""
    for group in alg.opt.param_groups:
        group["capturable"] = True
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            alg.step_losses(batch)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        alg.step_losses(batch)
    return graph.replay


def time_algorithm(cls: type[Algorithm], device: torch.device, batch: EpisodeBatch, eval_batch: EpisodeBatch,
                   queries: int, repeats: int, warmup: int, options: dict[str, Any] | None = None,
                   autocast: torch.dtype | None = None, cuda_graph: bool = False) -> dict[str, float]:
    """Median meta-training tasks/s on ``batch`` and adaptation ms/task on ``eval_batch`` of one configured
    algorithm, and the peak memory (:mod:`metabench.engine.memory`) of each, the meta-training one also above
    what the built algorithm held before its first step (``train_mem_over_start_mb``: on CPU the peak is the
    whole process's resident size, so this is the part a path's own tensors add); ``autocast``: run both under
    ``torch.autocast`` to that dtype; ``cuda_graph``: time the replay of a captured meta-training step
    (:func:`graphed_train_step`) where the device is CUDA and the algorithm has ``step_losses`` (the row's
    ``cuda_graph`` says whether it was)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    alg = _build(cls, device, batch, options)
    step = iter(range(10**9))
    cuda_graph = cuda_graph and device.type == "cuda" and hasattr(alg, "step_losses")
    memory.reset_peak(device)
    start_mb = memory.peak_mb(device)
    with _autocast(device, autocast):
        train = graphed_train_step(alg, batch) if cuda_graph else lambda: alg.train_step(batch, next(step))
        train_s = _median_seconds(train, device, repeats, warmup)
        train_mb = memory.peak_mb(device)
        memory.reset_peak(device)
        adapt_s = _median_seconds(
            lambda: alg.predict(eval_batch.support_x, eval_batch.support_y, eval_batch.query_x, eval_batch.ways),
            device, repeats, warmup)
        adapt_mb = memory.peak_mb(device)
    return {"meta_train_tasks_per_s": batch.tasks / train_s, "adapt_ms_per_task": 1000 * adapt_s / batch.tasks,
            "train_peak_mem_mb": train_mb, "adapt_peak_mem_mb": adapt_mb, "peak_mem_mb": max(train_mb, adapt_mb),
            "train_mem_over_start_mb": train_mb - start_mb, "cuda_graph": cuda_graph,
            "train_path": getattr(alg, "path", None), "predict_path": getattr(alg, "predict_path", None),
            "meta_grad_chunk": getattr(alg, "chunk", None), "task_threads": getattr(alg, "threads", None),
            "train_channels_last": getattr(alg, "train_cl", None), "predict_channels_last": getattr(alg, "test_cl", None)}


def reference_options(cls: type[Algorithm]) -> dict[str, Any]:
    """The options that make ``cls`` the reference of its rows: the per-task ``loop`` on the caller's thread
    alone (``task_threads = 1``), for the options it has (none for an algorithm without execution paths)."""
    ref = {"path": "loop", "task_threads": 1}
    return {k: v for k, v in ref.items() if k in cls.defaults}


def count_flops(cls: type[Algorithm], device: torch.device, batch: EpisodeBatch, eval_batch: EpisodeBatch,
                queries: int, options: dict[str, Any] | None = None) -> tuple[int, int]:
    """Floating-point operations of one ``train_step`` on ``batch`` and one ``predict`` on ``eval_batch``,
    counted on the reference loop (:func:`reference_options`; torch's counter sees only the calling thread's
    operations; see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    alg = _build(cls, device, batch, {**(options or {}), **reference_options(cls)})
    with FlopCounterMode(display=False) as train:
        alg.train_step(batch, 0)
    with FlopCounterMode(display=False) as adapt:
        alg.predict(eval_batch.support_x, eval_batch.support_y, eval_batch.query_x, eval_batch.ways)
    return train.get_total_flops(), adapt.get_total_flops()


def _rates(m: dict[str, float], flops: tuple[int, int], tasks: int, matmul: float) -> dict[str, float]:
    """GFLOP/s of meta-training and adaptation from the counted ``flops`` and the timings ``m``, and their
    fractions of the ``matmul`` rate."""
    train = flops[0] * m["meta_train_tasks_per_s"] / tasks / 1e9
    adapt = flops[1] / (m["adapt_ms_per_task"] * tasks / 1000) / 1e9
    return {"train_gflop_per_s": train, "adapt_gflop_per_s": adapt, "matmul_gflop_per_s": matmul,
            "matmul_fraction": train / matmul, "adapt_matmul_fraction": adapt / matmul}


PATHS = ("loop", "batched", "grouped")


def run_bench(algorithms: Sequence[str | type[Algorithm]], device: torch.device | str, ways: int = 5,
              shots: int = 1, queries: int = 15, meta_batch: int = 32, repeats: int = 5, warmup: int = 2,
              image_shape: tuple[int, int, int] = (1, 28, 28),
              options: dict[str, dict[str, Any]] | None = None,
              train_queries: int | None = None, paths: Sequence[str] = PATHS,
              autocast: torch.dtype | None = None, cuda_graph: bool = False,
              rounds: int = 1) -> list[dict[str, Any]]:
    """One row per (algorithm, path): the keys ``algorithm``, ``path``, ``device``, ``ways``, ``shots``,
    ``queries``, ``train_queries``, ``meta_batch``, ``meta_train_tasks_per_s``, ``adapt_ms_per_task``,
    ``train_peak_mem_mb``, ``adapt_peak_mem_mb``, ``peak_mem_mb`` (their maximum), ``train_mem_over_start_mb``,
    ``cuda_graph``, ``variant``, ``train_gflop_per_s``,
    ``adapt_gflop_per_s``, ``matmul_gflop_per_s``, ``matmul_fraction``, ``adapt_matmul_fraction`` and
    ``speedup_vs_reference`` (``None`` for algorithms without a ``path`` option), ``train_path``,
    ``predict_path``, ``meta_grad_chunk``, ``task_threads``, ``train_channels_last`` and ``predict_channels_last``
    (as the built algorithm resolved them; ``None`` where it has no such setting); ``auto`` rows also carry
    ``resolves_to`` (the training path). Paths timed: ``loop`` always, the other ``paths``, and ``auto``. The
    ``loop`` row, the reference, runs the tasks on the caller's thread (``task_threads = 1``, where the
    algorithm has that option) whatever ``options`` say; the other rows take ``options`` as given.
    ``autocast`` and ``cuda_graph`` as in :func:`time_algorithm` (``variant`` names them in the rows).
    ``rounds`` > 1 measures the paths of an algorithm in turn that many times (interleaved, so that a change
    of machine load hits every path alike) and reports each path's median rates and largest peaks.

    Meta-training steps see ``train_queries`` query images per class (default ``shots``: the K-shot,
    K-query meta-training batches of the MAML reference code for Omniglot); adaptation is timed on
    episodes with ``queries`` per class. ``options`` maps an algorithm name to extra options."""
    device = torch.device(device)
    train_queries = shots if train_queries is None else train_queries
    batch = synthetic_batch(meta_batch, ways, shots, train_queries, image_shape, device)
    eval_batch = synthetic_batch(meta_batch, ways, shots, queries, image_shape, device)
    matmul = statistics.median(matmul_gflops(device, repeats, warmup) for _ in range(rounds))
    variant = "+".join(([f"{str(autocast).removeprefix('torch.')}-autocast"] if autocast is not None else [])
                       + (["cuda-graph"] if cuda_graph else [])) or "default"
    timed = list(dict.fromkeys(("loop", *paths, "auto")))
    rows: list[dict[str, Any]] = []
    for cls in resolve_algorithms(algorithms):
        extra = dict((options or {}).get(cls.name, {}))
        base = {"algorithm": cls.name, "device": str(device), "ways": ways, "shots": shots, "queries": queries,
                "train_queries": train_queries, "meta_batch": meta_batch, "options": extra, "variant": variant}
        flops = count_flops(cls, device, batch, eval_batch, queries, extra)

        def measure(runs: list[dict[str, Any]]) -> dict[str, float]:
            m = {k: (max if "mem" in k else statistics.median)(r[k] for r in runs) if isinstance(v, float) else v
                 for k, v in runs[0].items()}
            return {**m, **_rates(m, flops, meta_batch, matmul)}

        def run(opts: dict[str, Any]) -> dict[str, Any]:
            return time_algorithm(cls, device, batch, eval_batch, queries, repeats, warmup, opts, autocast, cuda_graph)

        if "path" not in cls.defaults:
            rows.append({**base, "path": "-", **measure([run(extra) for _ in range(rounds)]),
                         "speedup_vs_reference": None})
            continue
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in timed}
        for _ in range(rounds):
            for p in timed:
                runs[p].append(run({**extra, "path": p, **(reference_options(cls) if p == "loop" else {})}))
        measured = {p: measure(r) for p, r in runs.items()}
        ref = measured["loop"]["meta_train_tasks_per_s"]
        for p, m in measured.items():
            rows.append({**base, "path": p, **m, "speedup_vs_reference": m["meta_train_tasks_per_s"] / ref,
                         **({"resolves_to": m["train_path"]} if p == "auto" else {})})
    return rows


def time_generators(generators: Sequence[str], dataset: str, device: torch.device | str, ways: int = 5,
                    shots: int = 1, queries: int = 15, meta_batch: int = 32, repeats: int = 20,
                    warmup: int = 3, data_root: Path | None = None, cache_dir: Path | None = None,
                    options: dict[str, dict[str, Any]] | None = None, registry: Any = None) -> list[dict[str, Any]]:
    """One row per task generator (``name`` or ``name@variant`` with ``options``, looked up in ``registry``,
    default one plugin discovery): the time to set it up on ``dataset``'s train split (CACTUs partitions come
    from the cache when they were built before) and the median milliseconds to generate one meta-batch of
    ``meta_batch`` tasks, synchronised on GPU."""
    from metabench.contracts import DataContext
    from metabench.engine.paths import default_cache_dir, default_data_root
    from metabench.engine.registry import discover

    device, reg = torch.device(device), registry if registry is not None else discover()
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
