"""Provenance of a run: a digest of the decoded data it read and of each plugin's code, and whether a
record's provenance still matches the code and data there are now (a record that does not is *stale*).

* :func:`plugin_code_digest` hashes the Python source a plugin class runs: the modules of the classes in
  its MRO and, followed through their ``import`` statements (module level or inside functions), every
  module of the same top-level packages, of the packages that provide ``metabench`` entry points, and
  metabench's numerical toolkit (``metabench.toolkit.*``, ``metabench.seeding``). Not hashed: metabench's
  plugin API and engine (``metabench.contracts``, ``engine``, ``execution``, ...), third-party packages and
  the standard library; an interface edit there would otherwise stale every record, and the record's
  ``environment`` names the metabench version and commit. Files are keyed by module name, not path, so
  the digest is the same in every checkout.
* :func:`data_digest` hashes the decoded tensors of a dataset (images, labels and every split's indices,
  with dtypes and shapes): the data a run read, whatever files it was decoded from.
* :class:`Fingerprints` gives the provenance a run of a record's config would get now (data digests are
  computed once per dataset and options, in memory) and judges a record ``fresh``, ``stale``, ``unknown``
  (it has no provenance: made before metabench recorded it) or ``unverified`` (today's plugin or data
  cannot be loaded, so nothing can be said).

A record's ``provenance`` is ``{"data_digest": ..., "plugins": {kind: {"name", "version", "code_digest"}}}``
(a cross-domain run, scored on another dataset's test split, also has ``test_data_digest`` and a
``test_dataset`` plugin). A record is stale when a data digest or a plugin's code digest differs from
today's; a version alone does not make it stale (a version bump without a code change changes no number).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from metabench.contracts import KINDS, ImageSet
from metabench.engine.builtin_plugins import entry_point_packages
from metabench.engine.registry import Registry
from metabench.engine.code_digest import FORMAT as _FORMAT, digest_sources
from metabench.names import base_name

_CORE = ("metabench.toolkit", "metabench.seeding")  # the numerical code plugins run on, hashed with them


@functools.lru_cache(maxsize=1)
def _plugin_packages() -> frozenset[str]:
    """Top-level packages that provide ``metabench`` entry points (the built-ins: ``metabench_plugins``)."""
    return frozenset(entry_point_packages())


def _module_file(name: str) -> Path | None:
    """The ``.py`` file of module ``name`` (imported or importable), or None."""
    where = getattr(sys.modules.get(name), "__file__", None)
    if where is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError, AttributeError):
            return None
        where = spec.origin if spec is not None and spec.has_location else None
    return Path(where) if where and str(where).endswith(".py") else None


def _class_file(cls: type) -> Path | None:
    """The file ``cls`` was defined in, from its own functions' code objects where it has any (right even
    when another module has since taken its module's name, as a re-imported plugin file does)."""
    for value in vars(cls).values():
        code = getattr(getattr(value, "__func__", value), "__code__", None)
        if code is not None and code.co_filename.endswith(".py"):
            return Path(code.co_filename)
    return None


def _imported(name: str, path: Path, source: str) -> set[str]:
    """Names of the modules that ``source`` (module ``name`` at ``path``) imports, relative ones resolved;
    ``from a import b`` gives ``a`` and, if it is a module, ``a.b``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                    if node.level else node.module
            except (ImportError, ValueError):
                continue
            if base:
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return out


def _followed(name: str, tops: frozenset[str]) -> bool:
    top = name.split(".")[0]
    return (top in tops or top in _plugin_packages()
            or any(name == c or name.startswith(c + ".") for c in _CORE))


@functools.lru_cache(maxsize=None)
def _source_files(cls: type) -> tuple[tuple[str, str, bytes], ...]:
    """(module name, file, source bytes) of every module :func:`plugin_code_digest` hashes for ``cls``."""
    seeds: dict[str, Path | None] = {}
    for c in cls.__mro__:
        if c.__module__ not in ("builtins", "abc"):
            seeds[c.__module__] = seeds.get(c.__module__) or _class_file(c)
    tops = frozenset(m.split(".")[0] for m in seeds) - {"metabench"}
    todo = [m for m in seeds if _followed(m, tops)]
    files: dict[str, tuple[str, bytes]] = {}
    while todo:
        name = todo.pop()
        if name in files:
            continue
        path = seeds.get(name) or _module_file(name)
        if path is None:
            continue
        try:
            data = path.read_bytes()
            imports = _imported(name, path, data.decode("utf-8"))
        except (OSError, UnicodeDecodeError, SyntaxError):
            continue
        files[name] = (str(path), data)
        todo.extend(m for m in imports if m not in files and _followed(m, tops))
    return tuple((name, path, data) for name, (path, data) in sorted(files.items()))


def _sources(cls: type) -> tuple[tuple[str, bytes], ...]:
    """(module name, source bytes) of every module :func:`plugin_code_digest` hashes for ``cls``, by name."""
    return tuple((name, data) for name, _, data in _source_files(cls))


def code_modules(cls: type) -> list[str]:
    """The modules whose source :func:`plugin_code_digest` hashes for plugin class ``cls``."""
    confined = vars(cls).get("__metabench_code_modules__")
    return list(confined) if confined is not None else [name for name, _ in _sources(cls)]


def code_sources(cls: type) -> list[tuple[str, str]]:
    """(module name, file) of each module :func:`plugin_code_digest` hashes for ``cls``."""
    return [(name, path) for name, path, _ in _source_files(cls)]


@functools.lru_cache(maxsize=None)
def plugin_code_digest(cls: type) -> str:
    """SHA-256 (hex) of the source a plugin class runs (see the module docstring for what is included);
    computed once per class object. A stand-in for an outside plugin
    (:mod:`metabench.engine.plugin_probe`) carries the digest this process re-computed from its files."""
    confined = vars(cls).get("__metabench_code_digest__")
    if confined is not None:
        return confined
    return digest_sources(list(_sources(cls)), f"{cls.__module__}.{cls.__qualname__}")


def data_digest(data: ImageSet) -> str:
    """SHA-256 (hex) of a dataset's decoded tensors: images, labels and each split's indices (by split name),
    each with its dtype and shape."""
    h = hashlib.sha256(_FORMAT)
    parts = [("images", data.images), ("labels", data.labels),
             *((f"split:{k}", v) for k, v in sorted(data.splits.items()))]
    for key, tensor in parts:
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.view(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def stale_reasons(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What changed between a record's ``provenance`` and today's (empty: nothing, the record is fresh)."""
    out = []
    if recorded.get("data_digest") != current["data_digest"]:
        out.append("the data changed")
    if recorded.get("test_data_digest") != current.get("test_data_digest"):
        out.append("the test data changed")
    was = recorded.get("plugins") or {}
    for kind, now in current["plugins"].items():
        if (was.get(kind) or {}).get("code_digest") != now["code_digest"]:
            out.append(f"the code of {kind.replace('_', ' ')} {now['name']} changed")
    return out


class Fingerprints:
    """Provenance as the code and data are now. ``load(entry, options)`` loads a dataset (an
    :class:`ImageSet`); its digest is computed once per dataset and options and kept in memory (as is a
    load that failed)."""

    def __init__(self, registry: Registry, load: Callable[[str, dict[str, Any]], ImageSet]) -> None:
        self.registry, self.load = registry, load
        self._data: dict[str, str | Exception] = {}

    @staticmethod
    def _key(entry: str, options: dict[str, Any]) -> str:
        return json.dumps([base_name(entry), options], sort_keys=True, default=str)

    def note(self, entry: str, options: dict[str, Any], data: ImageSet) -> None:
        """Digest ``data``, dataset ``entry`` just loaded with ``options`` elsewhere (by the runner), unless
        it is known: each load is digested once, while its tensors are at hand."""
        key = self._key(entry, options)
        if not isinstance(self._data.get(key), str):
            self._data[key] = data_digest(data)

    def data(self, entry: str, options: dict[str, Any]) -> str:
        """The data digest of dataset ``entry`` loaded with ``options`` (raises what loading raised)."""
        key = self._key(entry, options)
        if key not in self._data:
            try:
                self._data[key] = data_digest(self.load(entry, options))
            except Exception as exc:  # remembered: a missing dataset is not looked for again and again
                self._data[key] = exc
        value = self._data[key]
        if isinstance(value, Exception):
            raise value
        return value

    def current(self, config: dict[str, Any]) -> dict[str, Any]:
        """The ``provenance`` a run of ``config`` (a record's, options resolved) gets now; raises if a plugin
        is unknown or the dataset cannot be loaded."""
        options = config.get("options") or {}
        test = config.get("test_dataset") or config["dataset"]
        roles = [(kind, kind, config[kind]) for kind in KINDS]
        roles += [("test_dataset", "dataset", test)] if test != config["dataset"] else []
        plugins = {}
        for role, kind, entry in roles:
            info = self.registry.get(kind, base_name(entry))
            plugins[role] = {"name": info.name, "version": info.version, "code_digest": plugin_code_digest(info.cls)}
        out = {"data_digest": self.data(config["dataset"], options.get(config["dataset"]) or {}), "plugins": plugins}
        if test != config["dataset"]:  # cross-domain: scored on another dataset's test split
            out["test_data_digest"] = self.data(test, options.get(test) or {})
        return out

    def staleness(self, record: dict[str, Any]) -> tuple[str, list[str]]:
        """``(verdict, reasons)`` for a record: ``fresh``; ``stale`` and what changed; ``unknown`` (no
        provenance); ``unverified`` and why today's provenance could not be had."""
        recorded = record.get("provenance")
        if not isinstance(recorded, dict):
            return "unknown", []
        try:
            current = self.current(record["config"])
        except Exception as exc:
            return "unverified", [f"{type(exc).__name__}: {exc}"]
        reasons = stale_reasons(recorded, current)
        return ("stale" if reasons else "fresh"), reasons
