"""``metabench bench``: time meta-training and adaptation per execution path, and task generation."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import json
from typing import Any

import torch

from metabench.commands.common import parse_options
from metabench.execution.bench import PATHS, resolve_algorithms, run_bench, time_generators
from metabench.execution.gpu_check import gpu_check


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a plain-text table."""
    from tabulate import tabulate

    def fmt(v: Any) -> Any:
        return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else v)

    def path(r: dict[str, Any]) -> str:
        return f"auto ({r['resolves_to']})" if "resolves_to" in r else r["path"]

    head = ["algorithm", "path", "variant", "device", "ways", "shots", "train_queries", "queries", "meta_batch",
            "meta_train_tasks_per_s", "adapt_ms_per_task", "train_peak_mem_mb", "train_mem_over_start_mb",
            "adapt_peak_mem_mb",
            "train_gflop_per_s", "matmul_fraction", "speedup_vs_reference"]
    body = [[path(r) if k == "path" else fmt(r.get(k)) for k in head] for r in rows]
    return tabulate(body, headers=[h.replace("_", " ") for h in head], tablefmt="simple")


def _paths(text: str) -> tuple[str, ...]:
    paths = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in paths if p not in PATHS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown path(s) {bad}; known: {', '.join(PATHS)}")
    return paths


def run_preset(args: argparse.Namespace, names: list[str] | None, given: dict[str, Any]) -> int:
    """``--preset gpu``: :func:`~metabench.execution.gpu_check.gpu_check`, its JSON written under ``--out``;
    prints the summary (the whole report with ``--json``)."""
    options = {cls.name: {k: v for k, v in given.items() if k in cls.defaults} for cls in resolve_algorithms(names)}
    report = gpu_check(args.device, names, meta_batch=args.meta_batch, out_dir=args.out, ways=args.ways,
                       shots=args.shots, queries=args.queries, train_queries=args.train_queries,
                       repeats=args.repeats, warmup=args.warmup, options=options, paths=args.paths,
                       rounds=args.rounds)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['device_name']} ({report['device']}), torch {report['torch']}: {report['file']}")
        print(format_table(report["rows"]))
        for variant, why in report["variants_skipped"].items():
            print(f"variant {variant} not run: {why}")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the benchmark and print a table, or a JSON list with ``--json``."""
    if args.device == "cuda" and not torch.cuda.is_available():
        print("metabench: --device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    names = None if args.algorithms is None else [a.strip() for a in args.algorithms.split(",") if a.strip()]
    given = parse_options(args.option)
    if given is None:
        return 2
    if args.preset == "gpu":
        return run_preset(args, names, given)
    args.device = args.device or "cpu"
    classes = resolve_algorithms(names)
    options = {cls.name: {k: v for k, v in given.items() if k in cls.defaults} for cls in classes}
    unused = [k for k in given if not any(k in o for o in options.values())]
    if unused:
        print(f"metabench: error: no timed algorithm has the option(s) {', '.join(unused)}", file=sys.stderr)
        return 2
    rows = run_bench(classes, args.device, args.ways, args.shots, args.queries, args.meta_batch,
                     args.repeats, args.warmup, options=options, train_queries=args.train_queries,
                     paths=args.paths, rounds=args.rounds) if classes else []
    gens = [g.strip() for g in (args.generators or "").split(",") if g.strip()]
    if gens and not args.dataset:
        print("metabench: error: --generators needs --dataset NAME", file=sys.stderr)
        return 2
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
    """Register the ``bench`` subcommand on ``subparsers`` (its ``func`` is :func:`main`)."""
    p = subparsers.add_parser("bench", help="time meta-training and adaptation per execution path")
    p.add_argument("--algorithms", default=None,
                   help="comma-separated algorithm names (default: every algorithm with execution paths, i.e. "
                        "an option `path`: the gradient-based learners)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cpu; with --preset gpu, cuda when torch sees one")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=15, help="query images per class of the adaptation episodes")
    p.add_argument("--train-queries", type=int,
                   help="query images per class in meta-training batches (default: --shots, as in MAML's Omniglot "
                        "training)")
    p.add_argument("--meta-batch", type=int, default=32, help="tasks per meta-training step")
    p.add_argument("--paths", type=_paths, default=PATHS,
                   help=f"comma-separated execution paths to time besides loop and auto "
                        f"(default {','.join(PATHS)})")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure each algorithm's paths in turn this many times (interleaved) and report medians")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="set an option of every timed algorithm that has it (repeatable), e.g. channels_last=true")
    p.add_argument("--generators", default="",
                   help="also time meta-batch generation of these task generators (comma-separated)")
    p.add_argument("--dataset", help="dataset for --generators (required with it)")
    p.add_argument("--data-root", type=Path, help="data root for --generators (default $METABENCH_DATA)")
    p.add_argument("--cache-dir", type=Path, help="cache folder for --generators")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    p.add_argument("--preset", choices=["gpu"],
                   help="gpu: the device check (auto vs loop and grouped, bf16 autocast, CUDA-graph capture on "
                        "CUDA) for the gradient learners (or --algorithms), JSON written under --out")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                   help="folder for --preset's JSON file (default benchmarks/results)")
    p.set_defaults(func=main)
    return p
