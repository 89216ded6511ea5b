"""The ``metabench`` command: list and show plugins, run suites, build leaderboards, compare results, check and
scaffold plugins, time algorithms. One module per command in :mod:`metabench.commands`."""
from __future__ import annotations

import argparse
import sys

from metabench.commands import (bench, check_plugin, compare, evaluate, leaderboard, list_plugins, new_plugin,
                                run, show)
from metabench.engine import memory

COMMANDS = (list_plugins, show, run, leaderboard, compare, evaluate, check_plugin, new_plugin, bench)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``metabench`` command."""
    p = argparse.ArgumentParser(prog="metabench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    memory.keep_freed_heap()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
