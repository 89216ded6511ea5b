"""``metabench leaderboard``: regenerate the leaderboard files from the records."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metabench.commands.common import plugins_parent, registry

def main(args: argparse.Namespace) -> int:
    """Regenerate the leaderboard files from the records."""
    from metabench.report.leaderboard import write_leaderboard
    from metabench.engine.records import load_records

    records, errors = load_records(Path(args.results))
    for e in errors:
        print(f"metabench: warning: record left out: {e}", file=sys.stderr)
    paths = write_leaderboard(records, Path(args.out), registry(args))
    print(f"metabench: {len(records)} record(s) -> {', '.join(map(str, paths))}", file=sys.stderr)
    return 1 if errors and args.strict else 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the command on ``sub``."""
    lb = sub.add_parser("leaderboard", parents=[plugins_parent()], help="regenerate the leaderboards from the records")
    lb.add_argument("--results", default="results", help="folder searched recursively for records")
    lb.add_argument("--out", default="leaderboards",
                    help="where README.md, leaderboard.csv, index.html and REPRODUCTION.md go")
    lb.add_argument("--strict", action="store_true", help="exit 1 when a record had to be left out")
    lb.set_defaults(func=main)
    return lb
