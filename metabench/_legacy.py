"""Module paths of metabench 0.1's flat layout (``metabench.episodes``, ``metabench.conformance`` ...), kept
importable for third-party plugins and scaffolded packages written against them: importing one gives the
module at its new home, with a :class:`DeprecationWarning` naming it. Nothing is imported until asked for."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

MOVED = {
    **{m: f"metabench.toolkit.{m}" for m in ("inner_loop", "nets", "augment", "kmeans", "autoencoder",
                                             "embeddings", "episodes", "datacache")},
    **{m: f"metabench.engine.{m}" for m in ("paths", "suite", "registry", "runner", "records", "checkpoint",
                                            "evaluation", "clustering", "environment", "memory", "progress")},
    **{m: f"metabench.execution.{m}" for m in ("executors", "runlock", "bench")},
    "conformance": "metabench.checks.conformance", "scaffold": "metabench.checks.scaffold",
    "leaderboard": "metabench.report.leaderboard", "html_report": "metabench.report.html",
    "compare": "metabench.report.compare", "cli": "metabench.commands.cli",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):  # the new module itself, registered under the old name too
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass


class LegacyFinder(importlib.abc.MetaPathFinder):
    """Finds ``metabench.<old name>`` and hands out ``MOVED[old name]``."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, rest = fullname.partition(".")
        if prefix != "metabench" or rest not in MOVED:
            return None
        warnings.warn(f"{fullname} moved to {MOVED[rest]}; import it from there", DeprecationWarning,
                      stacklevel=2)
        return importlib.machinery.ModuleSpec(fullname, _Alias(MOVED[rest]))


def install() -> None:
    """Add the finder to ``sys.meta_path`` once."""
    if not any(isinstance(f, LegacyFinder) for f in sys.meta_path):
        sys.meta_path.append(LegacyFinder())
