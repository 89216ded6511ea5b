"""Confined discovery: an outside plugin's module is imported in a sandbox first, never in this process.

A plugin module runs code when it is imported, before any run is sealed. The project's own plugins
(entry points of the ``metabench`` distribution) are imported here as usual; every other source -- an
installed package's entry point, a ``--plugins-dir`` file -- is imported by :func:`probe` in a
``bwrap`` sandbox (:mod:`metabench.engine.sandbox`): the whole file system read-only, the data roots, the
cache folders and the results folder hidden, no network. The sandboxed child
(:mod:`metabench.engine.plugin_probe_child`) describes each task generator
and algorithm class it finds (name, options, claims, flags, code digest) as JSON, and this process builds
a *stand-in* class from that description (:func:`stand_in`): it carries everything the supervisor reads
from a plugin class, and its methods refuse to run. Runs of a stand-in are sealed, so the plugin's code
only ever executes in a sandbox: at import in the probe, then in the run's sealed worker.

A module that provides a dataset is imported here after its probe (datasets read the data root and run in
the supervisor by design); ``metabench run --no-seal`` imports everything here, as before.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from metabench.engine.code_digest import digest_sources

#: distributions whose entry points are the project's own code, imported without a probe
TRUSTED_DISTS = frozenset({"metabench"})
_TIMEOUT_S = 300


def _encode(x: Any) -> Any:
    """JSON with tuples kept apart from lists (options may hold either)."""
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v) for v in x]}
    if isinstance(x, list):
        return [_encode(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _encode(v) for k, v in x.items()}
    return x if x is None or isinstance(x, (bool, int, float, str)) else repr(x)


def _decode(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"__tuple__"}:
            return tuple(_decode(v) for v in x["__tuple__"])
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    return x


def stand_in(meta: dict[str, Any]) -> type:
    """A class that stands for a plugin class described by
    :func:`metabench.engine.plugin_probe_child.describe`: same name, options, claims, flags and code
    digest; instances refuse to run (its code lives only in sandboxes)."""
    from metabench.claims import Claim
    from metabench.contracts import Algorithm, PluginError, TaskGenerator

    kind, name = meta["kind"], meta["name"]
    base = {"task_generator": TaskGenerator, "algorithm": Algorithm}[kind]

    def refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise PluginError(f"{name}: an outside plugin runs only in a sealed worker; its code is not imported "
                          "by the supervisor (metabench run --no-seal runs it here)")

    attrs: dict[str, Any] = {
        "__module__": meta["module"], "__qualname__": meta["qualname"], "__doc__": meta["doc"],
        "name": name, "description": meta["description"], "paper": meta["paper"],
        "defaults": _decode(meta["defaults"]), "check_options": _decode(meta["check_options"]),
        "smoke_partner": _decode(meta["smoke_partner"]),
        "claims": tuple(Claim(**_decode(c)) for c in meta["claims"]),
        "__metabench_confined__": True, "__metabench_code_digest__": meta["code_digest"],
        "__metabench_code_modules__": tuple(meta["code_modules"]),
        "__metabench_code_files__": tuple(meta["code_files"]),
        **{k: bool(v) for k, v in meta["flags"].items()},
        **{m: refuse for m in getattr(base, "__abstractmethods__", ())}}
    if kind == "algorithm":
        own = bool(meta["own_clustering"])
        attrs["has_own_clustering"] = classmethod(lambda cls: own)
    return type(meta["qualname"].rpartition(".")[2] or name, (base,), attrs)


def _own_file(source: dict[str, Any]) -> str | None:
    """The file of a source's own module, found without importing anything: a ``--plugins-dir`` file, or
    the entry point's module among its distribution's installed files (None where it cannot be told, e.g.
    an editable install)."""
    if source["kind"] == "file":
        return os.path.realpath(source["path"])
    import importlib.metadata as md

    rel = source["value"].split(":")[0].strip().replace(".", "/")
    try:
        dist = md.distribution(source["dist"])
    except md.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f) in (rel + ".py", rel + "/__init__.py"):
            return os.path.realpath(dist.locate_file(f))
    return None


def check_digest(meta: dict[str, Any], source: dict[str, Any]) -> None:
    """Re-compute the code digest a sandboxed import reported from the files it names, here, and check
    that they include the source's own module file: a plugin cannot borrow another plugin's digest (and
    with it that plugin's check stamp or fresh records). Raises ``ValueError`` naming the mismatch."""
    files, paths = [], set()
    for name, path in meta["code_sources"]:
        try:
            files.append((str(name), Path(path).read_bytes()))
        except OSError as exc:
            raise ValueError(f"{meta['name']}: its code file {path} cannot be read here ({exc})") from None
        paths.add(os.path.realpath(path))
    digest = digest_sources(files, f"{meta['module']}.{meta['qualname']}")
    if digest != meta["code_digest"]:
        raise ValueError(f"{meta['name']}: the code digest its sandboxed import reported does not match its files")
    own = _own_file(source)
    if own is None or not files:
        return
    # a plugin file defines its classes; a package may define them in any of its modules
    home = own if source["kind"] == "file" else os.path.dirname(own) + os.sep
    if not any(p == home or p.startswith(home) for p in paths):
        raise ValueError(f"{meta['name']}: its reported code files are not those of its source {own}")


def is_stand_in(cls: type) -> bool:
    """Whether ``cls`` is a :func:`stand_in` (the plugin's code was only imported in a sandbox)."""
    return bool(vars(cls).get("__metabench_confined__"))


def probe(sources: list[dict[str, str]], hidden_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """Import each source in one sandboxed child and describe what it provides. ``sources``: dicts with
    ``kind`` ("entry_point": ``value``; "file": ``path``) and ``source`` (its display name). Returns, per
    source, ``{"source", "error"}`` or ``{"source", "datasets": [...names], "plugins": [describe(...)],
    "failures": [[source, error], ...]}``."""
    from metabench.engine import sandbox

    with sandbox.Scratch("metabench-probe-") as scratch:
        work = scratch.work
        (work / "sources.json").write_text(json.dumps(sources))
        argv = [sys.executable, "-m", "metabench.engine.plugin_probe_child", str(work)]
        cmd = scratch.command(argv, hidden_dirs=hidden_dirs)
        env = scratch.env()
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                                  timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return [{"source": s["source"], "error": f"importing it took over {_TIMEOUT_S} s (in the sandbox)"}
                    for s in sources]
        out = work / "described.json"
        try:
            described = json.loads(out.read_text())
            if not isinstance(described, list) or len(described) != len(sources):
                raise ValueError("not one entry per source")
        except (OSError, ValueError) as exc:
            tail = done.stderr.decode(errors="replace").strip()[-400:]
            return [{"source": s["source"], "error": f"the sandboxed import gave no description ({exc}; exit "
                     f"code {done.returncode}){': ' + tail if tail else ''}"} for s in sources]
    return described
