"""``metabench check-plugin NAME``: the conformance battery on one plugin."""
from __future__ import annotations

import argparse
import sys

import json

from metabench.commands.common import parse_options, plugins_parent
from metabench.checks.conformance import check_plugin, failures
from metabench.contracts import KINDS

def main(args: argparse.Namespace) -> int:
    """Run the conformance battery on one plugin; exit 1 if a check fails."""
    
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


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the command on ``sub``."""
    chk = sub.add_parser("check-plugin", parents=[plugins_parent()],
                         help="run the conformance battery on one plugin (exit 1 if a check fails)")
    chk.add_argument("name", help="the plugin's name")
    chk.add_argument("--kind", choices=KINDS,
                     help="needed only when several kinds have a plugin of that name")
    chk.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="a plugin option for the checks and the smoke run, VALUE in JSON (repeatable)")
    chk.add_argument("--data-root", help="data root for dataset plugins (default $METABENCH_DATA or ./data)")
    chk.add_argument("--cache-dir", help="cache folder (default $METABENCH_CACHE or ~/.cache/metabench)")
    chk.add_argument("--in-process", action="store_true",
                     help="smoke-run in this process instead of a fresh worker process")
    chk.add_argument("--json", action="store_true", help="print the results as JSON")
    chk.set_defaults(func=main)
    return chk
