"""Pass stamps of ``check-plugin`` and the ``isolation`` block of a record.

When every check of a plugin passes, ``check-plugin`` leaves a stamp in ``<cache_dir>/check-stamps/``
named by the plugin's kind, name and code digest (:func:`metabench.engine.provenance.plugin_code_digest`);
``run`` looks the stamps of a run's task generator and algorithm up, so a record says whether those
plugins passed the sealed isolation check *at the code that made it*. Sealed workers cannot see the cache
folder, so a plugin cannot stamp itself from inside a sealed run.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from metabench.atomic import write_atomic
from metabench.engine.provenance import plugin_code_digest

STAMPS = "check-stamps"


def stamp_path(cache_dir: Path, kind: str, name: str, digest: str) -> Path:
    """Where the pass stamp of plugin ``kind:name`` at code ``digest`` lives."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return Path(cache_dir) / STAMPS / f"{kind}-{safe}-{digest}.json"


def write_stamp(cache_dir: Path, kind: str, name: str, cls: type) -> Path:
    """Stamp plugin ``cls`` (``kind:name``) as having passed ``check-plugin`` at its current code."""
    digest = plugin_code_digest(cls)
    path = stamp_path(cache_dir, kind, name, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"kind": kind, "name": name, "code_digest": digest}, sort_keys=True) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()), mode=0o644)
    return path


def is_checked(cache_dir: Path, kind: str, name: str, cls: type) -> bool:
    """Whether plugin ``cls`` (``kind:name``) has a pass stamp at its current code."""
    digest = plugin_code_digest(cls)
    return bool(digest) and stamp_path(cache_dir, kind, name, digest).is_file()


def isolation(sealed: bool, cache_dir: Path, plugins: list[tuple[str, str, type]]) -> dict[str, Any]:
    """A record's ``isolation``: whether its run was ``sealed``, whether every one of ``plugins``
    (``(kind, name, class)``: the task generator and the algorithm) passed ``check-plugin`` at its current
    code, and one digest of their code."""
    lines = [f"{kind}:{name}:{plugin_code_digest(cls)}" for kind, name, cls in plugins]
    return {"sealed": bool(sealed),
            "checked": all(is_checked(cache_dir, kind, name, cls) for kind, name, cls in plugins),
            "code_digest": hashlib.sha256("\n".join(lines).encode()).hexdigest()}
