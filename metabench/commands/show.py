"""``metabench show PLUGIN``: one plugin in full: kind, origin, version, description, paper, options with their
defaults, the published numbers it claims, and the digest of its code that records carry."""
from __future__ import annotations

import argparse
import json
import sys

from metabench.commands.common import plugins_parent, registry
from metabench.contracts import KINDS


def describe(d: dict) -> str:
    """The ``list --json`` object of one plugin (plus ``code_digest`` and ``code_modules``) as text."""
    lines = [f"{d['name']} ({d['kind'].replace('_', ' ')})",
             f"  origin:      {d['origin']}" + (f" {d['version']}" if d["version"] else ""),
             f"  description: {d['description'] or '–'}",
             f"  paper:       {d['paper'] or '–'}",
             "  options:" + ("" if d["options"] else " none")]
    lines += [f"    {k} = {json.dumps(v)}" for k, v in sorted(d["options"].items())]
    lines.append("  claims:" + ("" if d["claims"] else " none"))
    for c in d["claims"]:
        who = ", ".join(f"{k.replace('_', ' ')} {c[k]}" for k in ("algorithm", "task_generator") if c.get(k))
        value = f"{c['value']:.2f}" + (f" ± {c['ci']:.2f}" if c.get("ci") is not None else "")
        lines.append(f"    {c['dataset']} {c['ways']}-way {c['shots']}-shot: {value}% ({c['paper']}, {c['table']}"
                     + (f"; {who}" if who else "") + ")" + (f" — {c['note']}" if c.get("note") else ""))
    lines.append(f"  code digest: {d['code_digest']}")
    lines.append(f"    over: {', '.join(d['code_modules'])}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Print one plugin (``--json``: the ``list --json`` object with its code digest); exit 2 if unknown."""
    from metabench.checks.conformance import find_plugin
    from metabench.engine.provenance import code_modules, plugin_code_digest
    from metabench.engine.registry import UnknownPluginError

    reg = registry(args, confine=True)
    try:
        info = find_plugin(reg, args.name, args.kind)
    except UnknownPluginError as exc:
        known = ", ".join(sorted({p.name for p in reg.all()}))
        print(f"metabench: error: {exc}; known: {known}", file=sys.stderr)
        return 2
    d = {**info.as_dict(), "code_digest": plugin_code_digest(info.cls), "code_modules": code_modules(info.cls)}
    print(json.dumps(d, indent=2) if args.json else describe(d))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the command on ``sub``."""
    sh = sub.add_parser("show", parents=[plugins_parent()],
                        help="one plugin in full: origin, paper, options with defaults, claims, code digest")
    sh.add_argument("name", help="the plugin's name")
    sh.add_argument("--kind", choices=KINDS, help="needed only when several kinds have a plugin of that name")
    sh.add_argument("--json", action="store_true", help="print the plugin as a JSON object")
    sh.set_defaults(func=main)
    return sh
