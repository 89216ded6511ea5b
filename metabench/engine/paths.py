"""Where metabench looks for data and where it caches decoded tensors."""
from __future__ import annotations

import os
from pathlib import Path


def default_data_root() -> Path:
    """``$METABENCH_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("METABENCH_DATA", "data")).expanduser()


def default_cache_dir() -> Path:
    """``$METABENCH_CACHE`` if set, else ``$XDG_CACHE_HOME/metabench`` (``~/.cache/metabench``)."""
    if "METABENCH_CACHE" in os.environ:
        return Path(os.environ["METABENCH_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "metabench"
