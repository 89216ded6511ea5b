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
                        force=args.force)
    runner = SuiteRunner(suite, reg, settings)
    runs = suite.runs()
    print(f"metabench: suite {suite.name!r}: {len(runs)} run(s) on {settings.device}, records in "
          f"{runner.out_dir}", file=sys.stderr)

    def report(o) -> None:
        if o.status == "ok":
            m = o.record["metrics"]
            msg = f"ok      {100 * m['accuracy_mean']:.2f} ± {100 * m['accuracy_ci95']:.2f}%"
        else:
            msg = o.status if o.status == "skipped" else f"FAILED  {o.error}"
        print(f"  {o.run_id}: {msg}", file=sys.stderr)

    try:
        outcomes = runner.run_all(report)
    except (UnknownPluginError, PluginError) as exc:
        print(f"metabench: error in suite {args.suite}: {exc}", file=sys.stderr)
        return 2
    failed = [o for o in outcomes if o.status == "failed"]
    done = sum(o.status == "ok" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    print(f"metabench: {done} ran, {skipped} skipped (already done), {len(failed)} failed", file=sys.stderr)
    for o in failed:
        print(f"  failed: {o.run_id}: {o.error}", file=sys.stderr)
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

    from metabench import bench

    bench.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
