"""The built-in plugins come from the same source tree as the core that loads them.

The built-ins are the package ``metabench_plugins``, the folder ``plugins/`` of the checkout. With an editable
install, setuptools' finder maps that name to the checkout that was *installed*, while ``metabench`` itself is
imported from whichever tree comes first on ``PYTHONPATH`` — a worktree at a commit making reference records,
say. Records name the core's commit and digest the plugins' code, so both must come from one tree: :func:`bind`
makes ``metabench_plugins`` the ``plugins/`` folder beside the imported ``metabench`` package when there is one.
An installed wheel has no such folder and is left to the normal import system.
"""
from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import metabench

PACKAGE = "metabench_plugins"


def source_folder() -> Path | None:
    """``plugins/`` beside the imported ``metabench`` package (a source checkout), or None."""
    folder = Path(metabench.__file__).resolve().parent.parent / "plugins"
    return folder if (folder / "__init__.py").is_file() else None


def _folder_of(module) -> Path | None:
    where = getattr(module, "__file__", None)
    return Path(where).resolve().parent if where else None


def bind() -> Path | None:
    """Import ``metabench_plugins`` from :func:`source_folder` (a no-op when it already is, or when there is
    none); its submodules follow through the package's ``__path__``. Returns the folder bound, or None.
    Already imported from another tree, it is left as it is, with a warning naming both folders."""
    folder = source_folder()
    if folder is None:
        return None
    loaded = sys.modules.get(PACKAGE)
    if loaded is not None:
        if _folder_of(loaded) != folder:
            warnings.warn(f"built-in plugins were imported from {_folder_of(loaded)} before discovery, but the core "
                          f"comes from {folder.parent}: records will digest those plugins' code", stacklevel=2)
        return _folder_of(loaded)
    spec = importlib.util.spec_from_file_location(PACKAGE, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    return folder
