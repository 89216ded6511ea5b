"""The sandboxed side of confined discovery (:mod:`metabench.engine.plugin_probe`): import each outside
source, describe its task generators and algorithms as JSON. Run as ``python -m
metabench.engine.plugin_probe_child WORK`` inside ``bwrap``; reads ``WORK/sources.json``, writes
``WORK/described.json``."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from metabench.engine import checkpoint, provenance
from metabench.engine import registry as r
from metabench.engine.plugin_probe import _encode


def describe(kind: str, cls: type) -> dict[str, Any]:
    """What the supervisor needs of a task generator or algorithm class, as JSON-able data."""
    return {"kind": kind, "name": cls.name, "qualname": cls.__qualname__, "module": cls.__module__,
            "doc": cls.__doc__ or "", "description": cls.description, "paper": getattr(cls, "paper", ""),
            "defaults": _encode(dict(cls.defaults)), "check_options": _encode(dict(cls.check_options or {})),
            "smoke_partner": _encode(vars(cls).get("smoke_partner")),
            "claims": [_encode(asdict(c)) for c in cls.__dict__.get("claims", ())],
            "flags": {k: bool(getattr(cls, k)) for k in ("uses_labels", "gives_tasks", "needs_tasks",
                                                         "trains_per_way", "resumable") if hasattr(cls, k)},
            "own_clustering": bool(kind == "algorithm" and cls.has_own_clustering()),
            "code_digest": provenance.plugin_code_digest(cls), "code_modules": provenance.code_modules(cls),
            "code_sources": [list(x) for x in provenance.code_sources(cls)],
            "code_files": checkpoint.plugin_files(cls)}


def main(work: Path) -> int:
    """In the sandbox: import each source of ``work/sources.json``, write ``work/described.json``."""
    import importlib.metadata as md

    sources = json.loads((work / "sources.json").read_text())
    out: list[dict[str, Any]] = []
    for s in sources:
        reg, pm = r.Registry(), r._new_manager()
        try:
            if s["kind"] == "file":
                module = r._import_file(Path(s["path"]))
            else:
                module = md.EntryPoint(name=s["name"], value=s["value"], group=r.ENTRY_POINT_GROUP).load()
        except BaseException as exc:  # a plugin file may even call sys.exit
            if isinstance(exc, KeyboardInterrupt):
                raise
            out.append({"source": s["source"], "error": r._describe(exc)})
            continue
        try:
            r._collect(reg, pm, module, s["source"], "", None)
            entry = {"source": s["source"], "datasets": sorted(reg.plugins["dataset"]),
                     "plugins": [describe(info.kind, info.cls) for kind in ("task_generator", "algorithm")
                                 for info in reg.plugins[kind].values()],
                     "failures": [[f.source, f.error] for f in reg.failures]}
        except Exception as exc:
            entry = {"source": s["source"], "error": r._describe(exc)}
        out.append(entry)
    (work / "described.json").write_text(json.dumps(out, allow_nan=True))
    return 0


if __name__ == "__main__":
    sys.dont_write_bytecode = True
    code = main(Path(sys.argv[1]))
    sys.stdout.flush()
    os._exit(code)  # a plugin's atexit handlers and threads do not get to run
