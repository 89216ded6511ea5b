"""``metabench new-plugin KIND NAME``: write a ready-to-edit plugin package."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metabench.checks.scaffold import ScaffoldError, new_plugin
from metabench.contracts import KINDS

def main(args: argparse.Namespace) -> int:
    """Write a ready-to-edit plugin package."""
    
    try:
        root = new_plugin(args.kind, args.name, Path(args.dir))
    except ScaffoldError as exc:
        print(f"metabench: error: {exc}", file=sys.stderr)
        return 2
    print(root)
    print(f"metabench: wrote {root}; next: pip install -e {root} && metabench check-plugin {args.name}",
          file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the command on ``sub``."""
    new = sub.add_parser("new-plugin", help="write a ready-to-edit plugin package DIR/metabench-NAME/")
    new.add_argument("kind", choices=KINDS)
    new.add_argument("name", help="plugin name: lower case letters, digits and _ (e.g. my_protonet)")
    new.add_argument("--dir", default=".", help="where the package folder goes (default: here)")
    new.set_defaults(func=main)
    return new
