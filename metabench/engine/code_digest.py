"""The digest of a plugin's source files: one SHA-256 over (module name, source) pairs, shared by the
provenance of records (:mod:`metabench.engine.provenance`) and the check of a sandboxed import's report
(:mod:`metabench.engine.plugin_probe`)."""
from __future__ import annotations

import hashlib

FORMAT = b"metabench-provenance-1\0"


def digest_sources(files: list[tuple[str, bytes]], fallback: str) -> str:
    """The digest of (module name, source) pairs sorted by name; ``fallback`` (a class's dotted name)
    when there are none."""
    h = hashlib.sha256(FORMAT)
    if not files:  # no source to be found (a class made at run time): its name is all there is
        h.update(fallback.encode())
    for name, data in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()
