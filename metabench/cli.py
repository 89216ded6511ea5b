"""The ``metabench`` command: list plugins, run suites, build leaderboards."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from metabench.paths import default_cache_dir, default_data_root


def _registry(args: argparse.Namespace):
    from metabench.registry import discover

    reg = discover(tuple(args.plugins_dir or ()))
    for f in reg.failures:
        print(f"metabench: warning: plugin {f.source} skipped: {f.error}", file=sys.stderr)
    return reg


def cmd_list(args: argparse.Namespace) -> int:
    """Print every plugin with kind, name, origin and description."""
    reg = _registry(args)
    items = [p.as_dict() for p in reg.all()]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    from tabulate import tabulate

    rows = [[p["kind"], p["name"], p["origin"] + (f" {p['version']}" if p["version"] else ""),
             p["description"]] for p in items]
    print(tabulate(rows, headers=["kind", "name", "origin", "description"], tablefmt="simple"))
    return 0


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("metabench: --device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def cmd_run(args: argparse.Namespace) -> int:
    """Run a suite, skipping runs whose records already exist."""
    from metabench.registry import UnknownPluginError
    from metabench.contracts import PluginError
    from metabench.runner import Settings, SuiteRunner
    from metabench.suite import SuiteError, load_suite

    try:
        suite = load_suite(args.suite)
    except SuiteError as exc:
        print(f"metabench: error: {exc}", file=sys.stderr)
        return 2
    reg = _registry(args)
    settings = Settings(results=Path(args.results), data_root=Path(args.data_root or default_data_root()),
                        cache_dir=Path(args.cache_dir or default_cache_dir()), device=_device(args.device),
                        force=args.force,
                        checkpoint_every=None if args.checkpoint_every < 0 else args.checkpoint_every)
    from metabench.executors import ExecutorError, make_executor, sigterm_exits

    try:
        executor = make_executor(args.executor, workers=args.workers, address=args.address,
                                 run_timeout=args.run_timeout, ray_cpus_per_run=args.ray_cpus_per_run,
                                 ray_gpus_per_run=args.ray_gpus_per_run, threads=args.threads,
                                 plugins_dirs=args.plugins_dir or ())
    except ExecutorError as exc:
        print(f"metabench: error: {exc}", file=sys.stderr)
        return 2
    runner = SuiteRunner(suite, reg, settings)
    runs = suite.runs(tuple(args.only or ()))
    print(f"metabench: suite {suite.name!r}: {len(runs)} run(s) on {settings.device} ({executor.name} "
          f"executor), records in {runner.out_dir}", file=sys.stderr)

    def report(o) -> None:
        if o.status == "ok":
            m = o.record["metrics"]
            msg = f"ok      {100 * m['accuracy_mean']:.2f} ± {100 * m['accuracy_ci95']:.2f}%"
        else:
            msg = (f"skipped ({o.error})" if o.error else "skipped") if o.status == "skipped" \
                else f"FAILED  {o.error} [{o.record.get('failed_plugin') if o.record else None}]"
        print(f"  {o.run_id}: {msg}", file=sys.stderr)

    try:
        with sigterm_exits():
            outcomes = runner.run_all(report, executor, tuple(args.only or ()))
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


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Regenerate the leaderboard files from the records."""
    from metabench.leaderboard import write_leaderboard
    from metabench.records import load_records

    records, errors = load_records(Path(args.results))
    for e in errors:
        print(f"metabench: warning: record left out: {e}", file=sys.stderr)
    paths = write_leaderboard(records, Path(args.out), _registry(args))
    print(f"metabench: {len(records)} record(s) -> {', '.join(map(str, paths))}", file=sys.stderr)
    return 1 if errors and args.strict else 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare two results folders (or records) run by run; exit 1 on a significant regression."""
    from metabench.compare import main as compare_main

    return compare_main(args.base, args.new, alpha=args.alpha, test=args.test, correction=args.correction,
                        as_json=args.json)


def _option_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items) -> dict | None:
    """``["KEY=VALUE", ...]`` -> ``{KEY: VALUE}`` (values parsed as JSON where they are JSON); ``None``
    after printing an error naming the malformed item."""
    options = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"metabench: error: --option wants KEY=VALUE, got {item!r}", file=sys.stderr)
            return None
        options[key] = _option_value(value)
    return options


def cmd_check_plugin(args: argparse.Namespace) -> int:
    """Run the conformance battery on one plugin; exit 1 if a check fails."""
    from metabench.conformance import check_plugin, failures

    options = parse_options(args.option)
    if options is None:
        return 2
    results = check_plugin(args.name, args.kind, plugins_dirs=args.plugins_dir or (), options=options,
                           data_root=args.data_root, cache_dir=args.cache_dir, isolated=not args.in_process)
    if args.json:
        print(json.dumps([r._asdict() for r in results], indent=2))
    else:
        from tabulate import tabulate

        word = {True: "PASS", False: "FAIL", None: "skip"}
        print(tabulate([[r.check, word[r.ok], r.message] for r in results],
                       headers=["check", "result", "message"], tablefmt="simple", maxcolwidths=[None, None, 90]))
    bad = failures(results)
    print(f"metabench: {args.name}: " + (f"{len(bad)} check(s) failed: " + ", ".join(r.check for r in bad)
                                         if bad else f"all {len(results)} checks passed or did not apply"),
          file=sys.stderr)
    return 1 if bad else 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    """Write a ready-to-edit plugin package."""
    from metabench.scaffold import ScaffoldError, new_plugin

    try:
        root = new_plugin(args.kind, args.name, Path(args.dir))
    except ScaffoldError as exc:
        print(f"metabench: error: {exc}", file=sys.stderr)
        return 2
    print(root)
    print(f"metabench: wrote {root}; next: pip install -e {root} && metabench check-plugin {args.name}",
          file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``metabench`` command."""
    p = argparse.ArgumentParser(prog="metabench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    plug = argparse.ArgumentParser(add_help=False)
    plug.add_argument("--plugins-dir", action="append", metavar="DIR",
                      help="also load plugins from the .py files in DIR (repeatable)")

    ls = sub.add_parser("list", parents=[plug], help="list every plugin")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    ls.set_defaults(func=cmd_list)

    run = sub.add_parser("run", parents=[plug], help="run a suite file")
    run.add_argument("suite", help="a suite TOML file")
    run.add_argument("--results", default="results", help="results root; records go to RESULTS/<suite>/")
    run.add_argument("--data-root", help="folder with omniglot-py/, MNIST/, splits/ (default $METABENCH_DATA "
                                         "or ./data)")
    run.add_argument("--cache-dir", help="where decoded tensors are cached (default $METABENCH_CACHE or "
                                         "~/.cache/metabench)")
    run.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    run.add_argument("--force", action="store_true", help="re-run runs whose records exist")
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
    run.set_defaults(func=cmd_run)

    lb = sub.add_parser("leaderboard", parents=[plug], help="regenerate the leaderboards from the records")
    lb.add_argument("--results", default="results", help="folder searched recursively for records")
    lb.add_argument("--out", default="leaderboards",
                    help="where README.md, leaderboard.csv, index.html and REPRODUCTION.md go")
    lb.add_argument("--strict", action="store_true", help="exit 1 when a record had to be left out")
    lb.set_defaults(func=cmd_leaderboard)

    cmp = sub.add_parser("compare", help="test NEW against BASE run by run on the paired test episodes; "
                                         "exit 1 on a significant regression")
    cmp.add_argument("base", help="results folder (searched recursively) or one record file")
    cmp.add_argument("new", help="results folder (searched recursively) or one record file")
    cmp.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    cmp.add_argument("--test", choices=["ttest", "wilcoxon"], default="ttest",
                     help="paired test on per-episode accuracy (default: paired t-test)")
    cmp.add_argument("--correction", choices=["holm", "none"], default="holm",
                     help="multiple-comparison correction over the matched runs (default: holm)")
    cmp.add_argument("--json", action="store_true", help="print the comparison as JSON")
    cmp.set_defaults(func=cmd_compare)

    chk = sub.add_parser("check-plugin", parents=[plug],
                         help="run the conformance battery on one plugin (exit 1 if a check fails)")
    chk.add_argument("name", help="the plugin's name")
    chk.add_argument("--kind", choices=["dataset", "task_generator", "algorithm"],
                     help="needed only when several kinds have a plugin of that name")
    chk.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="a plugin option for the checks and the smoke run, VALUE in JSON (repeatable)")
    chk.add_argument("--data-root", help="data root for dataset plugins (default $METABENCH_DATA or ./data)")
    chk.add_argument("--cache-dir", help="cache folder (default $METABENCH_CACHE or ~/.cache/metabench)")
    chk.add_argument("--in-process", action="store_true",
                     help="smoke-run in this process instead of a fresh worker process")
    chk.add_argument("--json", action="store_true", help="print the results as JSON")
    chk.set_defaults(func=cmd_check_plugin)

    new = sub.add_parser("new-plugin", help="write a ready-to-edit plugin package DIR/metabench-NAME/")
    new.add_argument("kind", choices=["dataset", "task_generator", "algorithm"])
    new.add_argument("name", help="plugin name: lower case letters, digits and _ (e.g. my_protonet)")
    new.add_argument("--dir", default=".", help="where the package folder goes (default: here)")
    new.set_defaults(func=cmd_new_plugin)

    from metabench import bench

    bench.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
