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

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from metabench import memory
from metabench.contracts import Algorithm, EpisodeBatch, RunContext
from metabench.seeding import derive_seed, make_generator

DEFAULT_ALGORITHMS = ("maml", "fomaml", "metasgd", "anil", "reptile")


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


def _resolve(algorithms: Sequence[str | type[Algorithm]]) -> list[type[Algorithm]]:
    """Algorithm classes for names (looked up in one plugin discovery) or classes (kept)."""
    if all(isinstance(a, type) for a in algorithms):
        return list(algorithms)
    from metabench.registry import discover

    reg = discover()
    return [a if isinstance(a, type) else reg.get("algorithm", a).cls for a in algorithms]


def time_algorithm(cls: type[Algorithm], device: torch.device, batch: EpisodeBatch, eval_batch: EpisodeBatch,
                   queries: int, repeats: int, warmup: int,
                   options: dict[str, Any] | None = None) -> dict[str, float]:
    """Median meta-training tasks/s on ``batch``, adaptation ms/task on ``eval_batch`` and the peak memory
    (:mod:`metabench.memory`) of one configured algorithm."""
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
    from metabench.inner_loop import resolve_path

    device = torch.device(device)
    train_queries = shots if train_queries is None else train_queries
    batch = synthetic_batch(meta_batch, ways, shots, train_queries, image_shape, device)
    eval_batch = synthetic_batch(meta_batch, ways, shots, queries, image_shape, device)
    rows: list[dict[str, Any]] = []
    for cls in _resolve(algorithms):
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
    from metabench.paths import default_cache_dir, default_data_root
    from metabench.registry import discover
    from metabench.suite import plugin_name

    device, reg = torch.device(device), discover()
    cache_dir = Path(cache_dir or default_cache_dir())
    data = reg.get("dataset", dataset).cls().load(DataContext(Path(data_root or default_data_root()), cache_dir))
    train = data.split("train").to(device)
    rows = []
    for name in generators:
        cls = reg.get("task_generator", plugin_name(name)).cls
        opts = cls.resolve_options({**(options or {}).get(plugin_name(name), {}), **(options or {}).get(name, {})})
        ctx = RunContext(device, derive_seed("bench", name), ways, shots, queries, data.image_shape, opts, cache_dir,
                         dataset=data.name)
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


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a plain-text table."""
    from tabulate import tabulate

    def fmt(v: Any) -> Any:
        return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else v)

    def path(r: dict[str, Any]) -> str:
        return f"auto ({r['resolves_to']})" if "resolves_to" in r else r["path"]

    head = ["algorithm", "path", "device", "ways", "shots", "train_queries", "queries", "meta_batch",
            "meta_train_tasks_per_s", "adapt_ms_per_task", "peak_mem_mb", "speedup_vs_reference"]
    body = [[path(r) if k == "path" else fmt(r.get(k)) for k in head] for r in rows]
    return tabulate(body, headers=[h.replace("_", " ") for h in head], tablefmt="simple")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark and print a table, or a JSON list with ``--json``."""
    if args.device == "cuda" and not torch.cuda.is_available():
        print("metabench: --device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    from metabench.cli import parse_options

    classes = _resolve([a.strip() for a in args.algorithms.split(",") if a.strip()])
    given = parse_options(args.option)
    if given is None:
        return 2
    options = {cls.name: {k: v for k, v in given.items() if k in cls.defaults} for cls in classes}
    unused = [k for k in given if not any(k in o for o in options.values())]
    if unused:
        print(f"metabench: error: no timed algorithm has the option(s) {', '.join(unused)}", file=sys.stderr)
        return 2
    rows = run_bench(classes, args.device, args.ways, args.shots, args.queries, args.meta_batch,
                     args.repeats, args.warmup, options=options, train_queries=args.train_queries) if classes else []
    gens = [g.strip() for g in (args.generators or "").split(",") if g.strip()]
    gen_rows = time_generators(gens, args.dataset, args.device, args.ways, args.shots, args.queries,
                               args.meta_batch, max(args.repeats, 10), args.warmup, args.data_root,
                               args.cache_dir) if gens else []
    if args.json:
        print(json.dumps(rows + gen_rows, indent=2))
    else:
        from tabulate import tabulate

        print("\n\n".join(t for t in (format_table(rows) if rows else "",
                                       tabulate(gen_rows, headers="keys", floatfmt=".3g") if gen_rows else "")
                           if t))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``bench`` subcommand on ``subparsers`` (its ``func`` is :func:`cmd_bench`)."""
    p = subparsers.add_parser("bench", help="time meta-training and adaptation per execution path")
    p.add_argument("--algorithms", default=",".join(DEFAULT_ALGORITHMS),
                   help="comma-separated algorithm names (default: %(default)s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=15, help="query images per class of the adaptation episodes")
    p.add_argument("--train-queries", type=int,
                   help="query images per class in meta-training batches (default: --shots, as in MAML's Omniglot "
                        "training)")
    p.add_argument("--meta-batch", type=int, default=32, help="tasks per meta-training step")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="set an option of every timed algorithm that has it (repeatable), e.g. channels_last=true")
    p.add_argument("--generators", default="",
                   help="also time meta-batch generation of these task generators (comma-separated)")
    p.add_argument("--dataset", default="omniglot", help="dataset for --generators (default: omniglot)")
    p.add_argument("--data-root", type=Path, help="data root for --generators (default $METABENCH_DATA)")
    p.add_argument("--cache-dir", type=Path, help="cache folder for --generators")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    p.set_defaults(func=cmd_bench)
    return p
