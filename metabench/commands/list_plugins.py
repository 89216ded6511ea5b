"""``metabench list``: every plugin with kind, name, origin and description (``--json``: also its paper,
options with their defaults, and the published numbers it claims)."""
from __future__ import annotations

import argparse
import json

from metabench.commands.common import plugins_parent, registry

def main(args: argparse.Namespace) -> int:
    """Print every plugin with kind, name, origin and description."""
    reg = registry(args, confine=True)
    items = [p.as_dict() for p in reg.all()]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    from tabulate import tabulate

    rows = [[p["kind"], p["name"], p["origin"] + (f" {p['version']}" if p["version"] else ""),
             p["description"]] for p in items]
    print(tabulate(rows, headers=["kind", "name", "origin", "description"], tablefmt="simple"))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the command on ``sub``."""
    ls = sub.add_parser("list", parents=[plugins_parent()], help="list every plugin")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    ls.set_defaults(func=main)
    return ls
