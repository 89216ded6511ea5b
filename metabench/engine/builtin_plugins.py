"""The built-in plugins come from the same source tree as the core that loads them.

The built-ins are the packages named by the entry points of metabench's own distribution (a folder of the
checkout mapped to a package name). With an editable install, setuptools' finder maps that name to the folder of
the checkout that was *installed*, while ``metabench`` itself is imported from whichever tree comes first on
``PYTHONPATH`` — a worktree at a commit making reference records, say. Records name the core's commit and digest
the plugins' code, so both must come from one tree: :func:`bind` imports each built-in package from the folder of
the same name beside the imported ``metabench`` package when there is one. An installed wheel has no such folder
and is left to the normal import system.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

import metabench


def entry_point_packages(eps: Iterable[md.EntryPoint] | None = None, dist: str | None = None) -> list[str]:
    """Top-level packages, other than ``metabench``, named by the entry points ``eps`` (default: the
    installed ones of group ``metabench``), only those of distribution ``dist`` when given."""
    eps = md.entry_points(group="metabench") if eps is None else eps
    return sorted({ep.value.split(":")[0].split(".")[0] for ep in eps
                   if dist is None or (ep.dist is not None and ep.dist.name == dist)} - {"metabench"})


def _folder_of(module) -> Path | None:
    where = getattr(module, "__file__", None)
    return Path(where).resolve().parent if where else None


def _installed_folder(package: str) -> Path | None:
    """The folder the import system would load ``package`` from (not importing it)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]).resolve() if locations else None


def bind(eps: Iterable[md.EntryPoint] | None = None) -> dict[str, Path]:
    """Import each built-in package (named by metabench's own entry points among ``eps``, default the
    installed ones) from the folder of its installed folder's name beside the imported core
    (a no-op where that is the installed folder already, or where there is none); submodules follow
    through the package's ``__path__``. Returns the folders bound, by package. A package already imported
    from another tree is left as it is, with a warning naming both folders."""
    root = Path(metabench.__file__).resolve().parent.parent
    bound = {}
    for package in entry_point_packages(eps, dist="metabench"):
        loaded = sys.modules.get(package)
        installed = _folder_of(loaded) if loaded is not None else _installed_folder(package)
        if installed is None:
            continue
        folder = root / installed.name
        if folder == installed or not (folder / "__init__.py").is_file():
            continue
        if loaded is not None:
            warnings.warn(f"built-in plugins {package!r} were imported from {installed} before discovery, but "
                          f"the core comes from {root}: records will digest those plugins' code", stacklevel=2)
            continue
        spec = importlib.util.spec_from_file_location(package, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[package]
            raise
        bound[package] = folder
    return bound
