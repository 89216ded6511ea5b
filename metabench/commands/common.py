"""What several commands share: plugin discovery with warnings, the device, ``--option KEY=VALUE``."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from metabench.engine.registry import Registry, discover


def plugins_parent() -> argparse.ArgumentParser:
    """The ``--plugins-dir`` option, as a parent parser for the commands that discover plugins."""
    plug = argparse.ArgumentParser(add_help=False)
    plug.add_argument("--plugins-dir", action="append", metavar="DIR",
                      help="also load plugins from the .py files in DIR (repeatable)")
    return plug


def registry(args: argparse.Namespace, confine: bool = False, hide: tuple = ()) -> Registry:
    """The plugins (installed ones and ``--plugins-dir``'s), each one that failed to load named on stderr;
    ``confine``: outside plugins' modules imported in a sandbox only, ``hide`` hidden from it
    (:func:`metabench.engine.registry.discover`)."""
    reg = discover(tuple(args.plugins_dir or ()), confine=confine, hide=hide)
    for f in reg.failures:
        print(f"metabench: warning: plugin {f.source} skipped: {f.error}", file=sys.stderr)
    return reg


def device(name: str) -> torch.device:
    """``torch.device(name)``; exits with a message if CUDA is asked for and absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("metabench: --device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


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
