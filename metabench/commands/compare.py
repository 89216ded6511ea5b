"""``metabench compare BASE NEW``: paired tests of two result sets, run by run."""
from __future__ import annotations

import argparse

def main(args: argparse.Namespace) -> int:
    """Compare two results folders (or records) run by run; exit 1 on a significant regression."""
    from metabench.report.compare import main as compare_main

    return compare_main(args.base, args.new, alpha=args.alpha, test=args.test, correction=args.correction,
                        as_json=args.json, match=args.match)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the command on ``sub``."""
    cmp = sub.add_parser("compare", help="test NEW against BASE run by run on the paired test episodes; "
                                         "exit 1 on a significant regression")
    cmp.add_argument("base", help="results folder (searched recursively) or one record file")
    cmp.add_argument("new", help="results folder (searched recursively) or one record file")
    cmp.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    cmp.add_argument("--test", choices=["ttest", "wilcoxon"], default="ttest",
                     help="paired test on per-episode accuracy (default: paired t-test)")
    cmp.add_argument("--correction", choices=["holm", "none"], default="holm",
                     help="multiple-comparison correction over the matched runs (default: holm)")
    cmp.add_argument("--match", choices=["run", "episodes"], default="run",
                     help="pair records by run identity (default: the same method, e.g. before and after a "
                          "change) or by their test episodes alone (two methods on the episodes they share)")
    cmp.add_argument("--json", action="store_true", help="print the comparison as JSON")
    cmp.set_defaults(func=main)
    return cmp
