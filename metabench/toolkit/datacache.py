"""A tiny on-disk cache of decoded dataset tensors.

Dataset plugins decode their source files once and keep the result as ``<cache_dir>/<key>.pt``. Keys come
from :func:`cache_key`, which folds in a format version and a fingerprint of the source files (relative
path, size, modification time), so a changed source or a changed decoder never reuses a stale entry.
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from metabench.atomic import write_atomic

#: Bumped whenever the layout of cache files written by this module changes.
FORMAT_VERSION = 1

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def cache_key(name: str, version: int, files: Iterable[Path] = (), root: Path | None = None,
              **params: Any) -> str:
    """A file-name-safe key ``<name>-v<version>-<digest>``.

    The digest covers :data:`FORMAT_VERSION`, ``params`` and, for each of ``files``, its path (relative to
    ``root`` when given), size and mtime. ``version`` is the caller's decoder version.
    """
    entries = []
    for f in sorted(Path(p) for p in files):
        st = f.stat()
        rel = f.relative_to(root) if root is not None else f
        entries.append([rel.as_posix(), st.st_size, st.st_mtime_ns])
    blob = json.dumps([FORMAT_VERSION, version, params, entries], sort_keys=True, default=str)
    return f"{name}-v{version}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _load(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors in ``path``, or ``None`` (with a warning) when the file is unreadable or malformed."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or garbled file
        warnings.warn(f"metabench cache file {path} is unreadable ({type(exc).__name__}: {exc}); "
                      f"rebuilding it", RuntimeWarning, stacklevel=3)
        return None
    if not (isinstance(data, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in data.items())):
        warnings.warn(f"metabench cache file {path} does not hold a dict of tensors; rebuilding it",
                      RuntimeWarning, stacklevel=3)
        return None
    return data


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` to ``path`` atomically (:func:`metabench.atomic.write_atomic`)."""
    write_atomic(path, lambda fh: torch.save(tensors, fh), mode=0o644)  # a cache is fine to share read-only


def cached_tensors(cache_dir: Path, key: str,
                   build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Tensors from ``cache_dir/<key>.pt`` if it holds a valid entry, else ``build()`` them and save.

    A corrupt entry is rebuilt with a warning. If the cache folder cannot be written, the built tensors
    are still returned (with a warning); caching is an optimisation, never a reason to fail.
    """
    if not _KEY_RE.match(key):
        raise ValueError(f"cache key {key!r} must be a plain file name ([A-Za-z0-9._-], no separators)")
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{key}.pt"
    if path.is_file():
        data = _load(path)
        if data is not None:
            return data
    tensors = build()
    if not (isinstance(tensors, dict) and all(isinstance(v, torch.Tensor) for v in tensors.values())):
        raise TypeError(f"build() for cache key {key!r} must return a dict of tensors")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _save(path, tensors)
    except OSError as exc:
        warnings.warn(f"could not write metabench cache file {path}: {exc}", RuntimeWarning, stacklevel=2)
    return tensors
