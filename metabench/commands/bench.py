"""``metabench bench``: time meta-training and adaptation per execution path, and task generation."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import json
from typing import Any

import torch

from metabench.commands.common import parse_options, plugins_parent, registry
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
            "train_gflop_per_s", "matmul_fraction", "task_threads", "speedup_vs_reference"]
    body = [[path(r) if k == "path" else fmt(r.get(k)) for k in head] for r in rows]
    return tabulate(body, headers=[h.replace("_", " ") for h in head], tablefmt="simple")


def _paths(text: str) -> tuple[str, ...]:
    paths = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in paths if p not in PATHS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown path(s) {bad}; known: {', '.join(PATHS)}")
    return paths


def run_preset(args: argparse.Namespace, classes: list[type], given: dict[str, Any]) -> dict[str, Any]:
    """``--preset gpu``: :func:`~metabench.execution.gpu_check.gpu_check` of ``classes``, its JSON written
    under ``--out``; returns the report."""
    options = {cls.name: {k: v for k, v in given.items() if k in cls.defaults} for cls in classes}
    return gpu_check(args.device, classes, meta_batch=args.meta_batch, out_dir=args.out, ways=args.ways,
                     shots=args.shots, queries=args.queries, train_queries=args.train_queries,
                     repeats=args.repeats, warmup=args.warmup, options=options, paths=args.paths,
                     rounds=args.rounds)


def _show(args: argparse.Namespace, result: Any) -> None:
    """Print the rows (or the preset's report) as tables, or as JSON with ``--json``."""
    if args.json:
        print(json.dumps(result, indent=2))
        return
    from tabulate import tabulate

    if args.preset == "gpu":
        print(f"{result['device_name']} ({result['device']}), torch {result['torch']}: {result['file']}")
        print(format_table(result["rows"]))
        for variant, why in result["variants_skipped"].items():
            print(f"variant {variant} not run: {why}")
        return
    rows = [r for r in result if "algorithm" in r]
    gen_rows = [r for r in result if "generator" in r]
    print("\n\n".join(t for t in (format_table(rows) if rows else "",
                                   tabulate(gen_rows, headers="keys", floatfmt=".3g") if gen_rows else "") if t))


def main(args: argparse.Namespace) -> int:
    """Run the benchmark and print a table, or a JSON list with ``--json``. Outside plugins (another
    distribution's, ``--plugins-dir``'s) are timed in a sandboxed child unless ``--no-seal``."""
    from metabench.engine import plugin_probe, sandbox
    from metabench.engine.registry import UnknownPluginError

    if args.device == "cuda" and not torch.cuda.is_available():
        print("metabench: --device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    names = None if args.algorithms is None else [a.strip() for a in args.algorithms.split(",") if a.strip()]
    gens = [g.strip() for g in (args.generators or "").split(",") if g.strip()]
    given = parse_options(args.option)
    if given is None:
        return 2
    if gens and not args.dataset:
        print("metabench: error: --generators needs --dataset NAME", file=sys.stderr)
        return 2
    reg = registry(args, confine=args.seal is not False, hide=tuple(_hidden(args, bool(gens))))
    try:
        classes = resolve_algorithms(names, reg)
        gen_classes = [reg.resolve("task_generator", g, None)[0].cls for g in gens]
    except UnknownPluginError as exc:
        print(f"metabench: error: {exc}", file=sys.stderr)
        return 2
    outside = [c.name for c in (*classes, *gen_classes) if plugin_probe.is_stand_in(c)]
    if outside:
        ok, why = sandbox.available()
        if ok:
            return _in_sandbox(args, bool(gens))
        print(f"metabench: WARNING: timing outside plugin(s) {', '.join(outside)} in this process, NOT "
              f"sandboxed: {why}", file=sys.stderr)
        reg = registry(args)
        classes = resolve_algorithms(names, reg)
    if args.preset == "gpu":
        _show(args, run_preset(args, classes, given))
        return 0
    args.device = args.device or "cpu"
    options = {cls.name: {k: v for k, v in given.items() if k in cls.defaults} for cls in classes}
    unused = [k for k in given if not any(k in o for o in options.values())]
    if unused:
        print(f"metabench: error: no timed algorithm has the option(s) {', '.join(unused)}", file=sys.stderr)
        return 2
    rows = run_bench(classes, args.device, args.ways, args.shots, args.queries, args.meta_batch,
                     args.repeats, args.warmup, options=options, train_queries=args.train_queries,
                     paths=args.paths, rounds=args.rounds) if classes else []
    gen_rows = time_generators(gens, args.dataset, args.device, args.ways, args.shots, args.queries,
                               args.meta_batch, max(args.repeats, 10), args.warmup, args.data_root,
                               args.cache_dir, registry=reg) if gens else []
    _show(args, rows + gen_rows)
    return 0


def _hidden(args: argparse.Namespace, generators: bool) -> list[Path]:
    """What a sandboxed bench must not see: ``./results``, and, unless it times task generators on a
    dataset, the data roots and caches."""
    from metabench.engine.paths import default_cache_dir, default_data_root

    hidden = [Path("results").resolve()]
    if not generators:
        hidden += [Path(p) for p in (args.data_root, args.cache_dir) if p] + [default_data_root(),
                                                                             default_cache_dir()]
    return hidden


def _child_argv(args: argparse.Namespace, out: Path) -> list[str]:
    """The ``bench`` arguments of ``args`` for the sandboxed child: trusted there (``--no-seal``), JSON out."""
    argv = ["bench", "--no-seal", "--json", "--ways", str(args.ways), "--shots", str(args.shots),
            "--queries", str(args.queries), "--meta-batch", str(args.meta_batch), "--paths", ",".join(args.paths),
            "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--rounds", str(args.rounds)]
    for flag, value in (("--device", args.device), ("--train-queries", args.train_queries),
                        ("--algorithms", args.algorithms), ("--generators", args.generators or None),
                        ("--dataset", args.dataset), ("--data-root", args.data_root),
                        ("--cache-dir", args.cache_dir), ("--preset", args.preset)):
        if value is not None:
            argv += [flag, str(value)]
    for item in args.option or ():
        argv += ["--option", item]
    for d in args.plugins_dir or ():
        argv += ["--plugins-dir", str(Path(d).resolve())]
    return argv + (["--out", str(out)] if args.preset else [])


def _in_sandbox(args: argparse.Namespace, generators: bool) -> int:
    """Run this bench in a bubblewrap child (:mod:`metabench.engine.sandbox`): the file system read-only but
    for a scratch folder (and the cache, when generators are timed on a dataset), results hidden, no network;
    the child imports and times the plugins, this process prints its rows and writes the preset's file."""
    import shutil
    import subprocess

    from metabench.engine import sandbox
    from metabench.engine.paths import default_cache_dir

    with sandbox.Scratch("metabench-bench-") as scratch:
        writable = []
        if generators:
            cache = Path(args.cache_dir or default_cache_dir())
            cache.mkdir(parents=True, exist_ok=True)
            writable.append(cache)
        argv = [sys.executable, "-m", "metabench.commands.cli", *_child_argv(args, scratch.work / "out")]
        cmd = scratch.command(argv, hidden_dirs=_hidden(args, generators), writable=writable,
                              device_nodes=args.device == "cuda" or (args.preset == "gpu" and args.device is None))
        env = scratch.env()
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
        if done.returncode != 0:
            print(f"metabench: error: the sandboxed bench failed (exit code {done.returncode}); see above",
                  file=sys.stderr)
            return done.returncode
        try:
            result = json.loads(done.stdout)
        except ValueError as exc:
            print(f"metabench: error: the sandboxed bench gave no JSON ({exc})", file=sys.stderr)
            return 1
        if args.preset == "gpu":  # the child wrote the report in its scratch folder: it goes under --out here
            target = Path(args.out) / Path(result["file"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(result["file"], target)
            result["file"] = str(target)
    _show(args, result)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``bench`` subcommand on ``subparsers`` (its ``func`` is :func:`main`)."""
    p = subparsers.add_parser("bench", parents=[plugins_parent()],
                              help="time meta-training and adaptation per execution path")
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
    p.add_argument("--seal", action=argparse.BooleanOptionalAction, default=None,
                   help="time outside plugins (another distribution's, --plugins-dir's) in a sandboxed child: "
                        "the file system read-only, results and data hidden (default where bubblewrap works); "
                        "--no-seal: import and time them in this process")
    p.set_defaults(func=main)
    return p
