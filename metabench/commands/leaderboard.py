"""``metabench leaderboard``: regenerate the leaderboard files from the records, marking stale ones."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metabench.commands.common import plugins_parent, registry
from metabench.engine.paths import default_cache_dir, default_data_root


def main(args: argparse.Namespace) -> int:
    """Regenerate the leaderboard files from the records."""
    from metabench.report.leaderboard import write_leaderboard
    from metabench.engine.records import load_records

    records, errors = load_records(Path(args.results))
    for e in errors:
        print(f"metabench: warning: record left out: {e}", file=sys.stderr)
    # outside plugins are imported in a sandbox only: their stand-ins carry the claims and code digests needed
    data_root, cache_dir = Path(args.data_root or default_data_root()), Path(args.cache_dir or default_cache_dir())
    reg = registry(args, confine=True, hide=(Path(args.results), data_root, cache_dir))
    stale = _stale_records(records, reg, data_root, cache_dir)
    paths = write_leaderboard(records, Path(args.out), reg, stale)
    print(f"metabench: {len(records)} record(s) -> {', '.join(map(str, paths))}", file=sys.stderr)
    return 1 if errors and args.strict else 0


def _stale_records(records: list[dict], reg, data_root: Path, cache_dir: Path) -> set[str]:
    """The run ids of the ok records whose data or plugin code has changed, each named on stderr with what
    changed; records that cannot be checked (a plugin or dataset missing today) are named in a warning."""
    from metabench.contracts import DataContext
    from metabench.engine.provenance import Fingerprints
    from metabench.names import base_name

    def load(entry: str, options: dict):
        return reg.get("dataset", base_name(entry)).cls().load(DataContext(data_root, cache_dir, options))

    fingerprints, stale, unverified = Fingerprints(reg, load), set(), {}
    for r in records:
        if r["status"] != "ok":
            continue
        verdict, reasons = fingerprints.staleness(r)
        if verdict == "stale":
            stale.add(r["run_id"])
            print(f"metabench: stale: {r['run_id']} ({'; '.join(reasons)})", file=sys.stderr)
        elif verdict == "unverified":
            unverified.setdefault(reasons[0], []).append(r["run_id"])
    for why, ids in sorted(unverified.items()):
        print(f"metabench: warning: {len(ids)} record(s) could not be checked for staleness ({why}), e.g. "
              f"{ids[0]}", file=sys.stderr)
    return stale


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the command on ``sub``."""
    lb = sub.add_parser("leaderboard", parents=[plugins_parent()], help="regenerate the leaderboards from the records")
    lb.add_argument("--results", default="runs", help="folder searched recursively for records (default runs/, "
                    "your own; the committed leaderboards/ come from --results results --out leaderboards)")
    lb.add_argument("--out", default="runs/leaderboards",
                    help="where README.md, leaderboard.csv, index.html and REPRODUCTION.md go")
    lb.add_argument("--strict", action="store_true", help="exit 1 when a record had to be left out")
    lb.add_argument("--data-root", help="data root, to tell whether records' data changed (default "
                                         "$METABENCH_DATA or ./data)")
    lb.add_argument("--cache-dir", help="decoded-tensor cache (default $METABENCH_CACHE or ~/.cache/metabench)")
    lb.set_defaults(func=main)
    return lb
