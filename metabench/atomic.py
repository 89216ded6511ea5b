"""Atomic file writes: a reader sees the old file or the whole new one, never a part."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], mode: int | None = None) -> None:
    """Call ``write`` on a temporary file beside ``path`` (named ``.<name>.*.tmp``, so a folder's leftovers
    from a writer killed mid-write can be found), fsync it, give it ``mode`` if set (``mkstemp`` makes
    0600), then rename it over ``path``. On any error the temporary file is removed and the error raised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
