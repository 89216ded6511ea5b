"""``metabench run SUITE``: run a suite on an executor, skipping runs whose records exist."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metabench.commands.common import device, plugins_parent, registry
from metabench.engine.paths import default_cache_dir, default_data_root

def main(args: argparse.Namespace) -> int:
    """Run a suite, skipping runs whose records already exist."""
    from metabench.engine.registry import UnknownPluginError
    from metabench.contracts import PluginError
    from metabench.engine.runner import Settings, SuiteRunner
    from metabench.engine.suite import SuiteError, load_suite

    try:
        suite = load_suite(args.suite)
    except SuiteError as exc:
        print(f"metabench: error: {exc}", file=sys.stderr)
        return 2
    settings = Settings(results=Path(args.results), data_root=Path(args.data_root or default_data_root()),
                        cache_dir=Path(args.cache_dir or default_cache_dir()), device=device(args.device),
                        force=args.force, save_models=args.save_models,
                        checkpoint_every=None if args.checkpoint_every < 0 else args.checkpoint_every,
                        seal=args.seal)
    # outside plugins are imported in a sandbox only, unless the user trusts them with --no-seal
    reg = registry(args, confine=args.seal is not False,
                   hide=(settings.results, settings.data_root, settings.cache_dir, *settings.hide))
    from metabench.execution.executors import (ExecutorError, check_suite_plugins, make_executor, run_suite,
                                               sigterm_exits)

    try:
        executor = make_executor(args.executor, workers=args.workers, address=args.address,
                                 run_timeout=args.run_timeout, ray_cpus_per_run=args.ray_cpus_per_run,
                                 ray_gpus_per_run=args.ray_gpus_per_run, threads=args.threads,
                                 plugins_dirs=args.plugins_dir or ())
    except ExecutorError as exc:
        print(f"metabench: error: {exc}", file=sys.stderr)
        return 2
    runner = SuiteRunner(suite, reg, settings)
    try:
        check_suite_plugins(suite, reg)  # the header only for a suite whose plugins and options are valid
    except (UnknownPluginError, PluginError) as exc:
        print(f"metabench: error in suite {args.suite}: {exc}", file=sys.stderr)
        return 2
    runs = runner.runs(tuple(args.only or ()))
    if args.only and not runs:
        ids = [r.run_id for r in runner.runs()]
        print(f"metabench: error: --only {' '.join(args.only)} matches none of the {len(ids)} run ids of suite "
              f"{suite.name!r}, e.g. " + ", ".join(ids[:3]), file=sys.stderr)
        return 2
    print(f"metabench: suite {suite.name!r}: {len(runs)} run(s) on {settings.device} ({executor.name} "
          f"executor), records in {runner.out_dir}", file=sys.stderr)
    if not args.force:
        _name_replaced_records(runner, runs)

    def report(o) -> None:
        if o.status == "ok":
            msg = "ok      " + ", ".join(
                f"{e['ways']}w{e['shots']}s {100 * e['metrics']['accuracy_mean']:.2f} ± "
                f"{100 * e['metrics']['accuracy_ci95']:.2f}%" for e in o.record["evaluations"])
        else:
            msg = (f"skipped ({o.error})" if o.error else "skipped") if o.status == "skipped" \
                else f"FAILED  {o.error} [{o.record.get('failed_plugin') if o.record else None}]"
        print(f"  {o.run_id}: {msg}", file=sys.stderr)

    try:
        with sigterm_exits():
            outcomes = run_suite(runner, executor, tuple(args.only or ()), on_outcome=report)
    except (UnknownPluginError, PluginError, ExecutorError) as exc:
        print(f"metabench: error in suite {args.suite}: {exc}", file=sys.stderr)
        return 2
    failed = [o for o in outcomes if o.status == "failed"]
    done = sum(o.status == "ok" for o in outcomes)
    elsewhere = sum(o.status == "skipped" and o.error is not None for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes) - elsewhere
    print(f"metabench: {done} ran, {skipped} skipped (already done), "
          + (f"{elsewhere} skipped (running elsewhere), " if elsewhere else "")
          + f"{len(failed)} failed", file=sys.stderr)
    for o in failed:
        print(f"  failed: {o.run_id} [{o.record.get('failed_plugin') if o.record else None}]: {o.error}",
              file=sys.stderr)
    return 1 if failed else 0


def _name_replaced_records(runner, runs) -> None:
    """Say on stderr which existing records this run replaces and why (corrupt, another schema version,
    stale), and how many ok records are kept without provenance to check them by."""
    from metabench.execution.outcomes import existing

    unknown = 0
    for spec in runs:
        e = existing(runner, spec)
        if e.replaces:
            verb = "re-running" if e.verdict == "stale" else "replacing"
            print(f"metabench: {verb} {e.replaces}", file=sys.stderr)
        unknown += e.verdict == "unknown"
    if unknown:
        print(f"metabench: note: {unknown} existing ok record(s) carry no provenance (made before metabench "
              "recorded data and code digests), so whether they are stale cannot be told: kept; --force "
              "re-runs them", file=sys.stderr)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the command on ``sub``."""
    run = sub.add_parser("run", parents=[plugins_parent()], help="run a suite file")
    run.add_argument("suite", help="a suite TOML file")
    run.add_argument("--results", default="runs", help="results root; records go to RESULTS/<suite>/ (default runs/, "
                     "ignored by git; the committed reference records are written with --results results)")
    run.add_argument("--data-root", help="folder with omniglot-py/, MNIST/, splits/ (default $METABENCH_DATA "
                                         "or ./data)")
    run.add_argument("--cache-dir", help="where decoded tensors are cached (default $METABENCH_CACHE or "
                                         "~/.cache/metabench)")
    run.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    run.add_argument("--force", action="store_true", help="re-run runs whose records exist")
    run.add_argument("--save-models", action="store_true",
                     help="keep each run's trained model beside its record (<run id>.model.pt), for "
                          "metabench evaluate")
    run.add_argument("--only", action="append", metavar="PATTERN",
                     help="run only the runs whose id matches this shell pattern (repeatable)")
    run.add_argument("--executor", choices=["local", "process", "ray"], default="local",
                     help="local: this process, one run at a time (default); process: a pool of worker "
                          "processes, one per run; ray: one Ray task per run (pip install 'metabench[ray]')")
    run.add_argument("--workers", type=int, metavar="N",
                     help="process: runs at once (default: CPU cores); ray: CPUs of a local Ray started for "
                          "the call (default: all)")
    run.add_argument("--address", metavar="ADDR",
                     help="ray: a running cluster ('auto' or host:port); default: start a local Ray")
    run.add_argument("--threads", type=int, metavar="T",
                     help="torch threads per run, for every executor (default: torch's default here, so "
                          "all executors give bit-identical records; cores/workers avoids oversubscription)")
    run.add_argument("--run-timeout", type=float, metavar="SECONDS",
                     help="kill a run after this many seconds; it gets a failed record (a re-run resumes "
                          "it from its last checkpoint)")
    run.add_argument("--checkpoint-every", type=float, default=600.0, metavar="SECONDS",
                     help="write a mid-run checkpoint of a resumable algorithm this often (default "
                          "%(default)s; 0: after every step; negative: never); a stopped run resumes from it")
    run.add_argument("--ray-cpus-per-run", type=float, default=1.0, metavar="C",
                     help="ray: CPUs each run asks for (default 1)")
    run.add_argument("--ray-gpus-per-run", type=float, metavar="G",
                     help="ray: GPUs (or a fraction of one) each run asks for (default: 1 with --device cuda, "
                          "else 0)")
    run.add_argument("--seal", action=argparse.BooleanOptionalAction, default=None,
                     help="meta-train and evaluate each run's task generator and algorithm in a sealed worker "
                          "(bubblewrap: no labels, no data root, cache or results; writes only to scratch). "
                          "Default: runs of unsupervised generators, where bubblewrap works; --seal: every run "
                          "(supervised ones keep their training labels); --no-seal: none")
    run.set_defaults(func=main)
    return run
