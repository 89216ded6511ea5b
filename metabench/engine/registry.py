"""Plugin discovery on pluggy: built-ins and installed packages (entry-point group ``metabench``) and
plain ``.py`` files from a ``--plugins-dir``.

A module that fails to import or whose hook raises or returns garbage is reported by name and skipped;
two plugins of the same kind and name are a :class:`PluginConflictError`.
"""
from __future__ import annotations

from typing import Any

import importlib.metadata as md
import importlib.util
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

import pluggy

from metabench import hookspecs
from metabench.engine import builtin_plugins, plugin_probe, sandbox
from metabench.names import base_name
from metabench.contracts import KINDS, Algorithm, Dataset, TaskGenerator

ENTRY_POINT_GROUP = "metabench"

HOOKS = dict(zip(KINDS, (  # kind -> (hook name, base class)
    ("metabench_datasets", Dataset),
    ("metabench_task_generators", TaskGenerator),
    ("metabench_algorithms", Algorithm))))


class PluginConflictError(Exception):
    """Two plugins declare the same kind and name."""


class UnknownPluginError(KeyError):
    """A suite or command names a plugin that was not found."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def _json_safe(x: Any) -> Any:
    """``x`` with anything JSON cannot hold (tuples aside, which become lists) as its ``repr``."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x if x is None or isinstance(x, (bool, int, float, str)) else repr(x)


@dataclass(frozen=True)
class PluginInfo:
    """One discovered plugin class and where it came from."""

    kind: str
    name: str
    cls: type
    origin: str
    version: str | None
    description: str

    def as_dict(self) -> dict:
        """The ``metabench list --json`` object."""
        return {"kind": self.kind, "name": self.name, "origin": self.origin, "version": self.version,
                "description": self.description, "paper": getattr(self.cls, "paper", ""),
                "options": _json_safe(dict(getattr(self.cls, "defaults", {}))),
                "claims": [_json_safe(asdict(c)) for c in self.cls.__dict__.get("claims", ())]}


@dataclass(frozen=True)
class PluginFailure:
    """A plugin module that could not be loaded or registered, and why."""

    source: str
    error: str


@dataclass
class Registry:
    """Every plugin found, by kind and name, plus the failures met on the way."""

    plugins: dict[str, dict[str, PluginInfo]] = field(default_factory=lambda: {k: {} for k in HOOKS})
    failures: list[PluginFailure] = field(default_factory=list)
    plugins_dirs: tuple[str, ...] = ()  # the --plugins-dir folders it was discovered with (for sealed workers)

    def get(self, kind: str, name: str) -> PluginInfo:
        """The plugin of ``kind`` called ``name``, or :class:`UnknownPluginError` listing the known ones."""
        try:
            return self.plugins[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.plugins.get(kind, {}))) or "none"
            hint = ""
            for f in self.failures:
                if name in f.source:
                    hint = f" (a plugin source {f.source} failed to load: {f.error})"
            raise UnknownPluginError(f"unknown {kind.replace('_', ' ')} {name!r}; known: {known}{hint}") from None

    def resolve(self, kind: str, entry: str, given: dict[str, Any] | None = None) -> tuple[PluginInfo, dict[str, Any]]:
        """The plugin behind suite entry ``entry`` (a name or a ``name@variant``) and its options: the
        plugin's ``defaults`` updated by ``given``; an unknown plugin or option raises naming it."""
        info = self.get(kind, base_name(entry))
        return info, info.cls.resolve_options(given)

    def all(self) -> list[PluginInfo]:
        """Every plugin, sorted by kind (dataset, task generator, algorithm) then name."""
        order = {k: i for i, k in enumerate(HOOKS)}
        return sorted((p for d in self.plugins.values() for p in d.values()),
                      key=lambda p: (order[p.kind], p.name))


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _import_file(path: Path) -> ModuleType:
    mod_name = f"metabench_userplugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return module


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _collect(reg: Registry, pm: pluggy.PluginManager, module: object, source: str, origin: str,
             version: str | None) -> None:
    """Register ``module`` and add the classes its hooks return, checking each one."""
    try:
        pm.register(module, name=source)
    except Exception as exc:  # pluggy validates hookimpl signatures here
        reg.failures.append(PluginFailure(source, _describe(exc)))
        return
    for kind, (hook_name, base) in HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin_name != source:
                continue
            try:
                classes = impl.function()
                if classes is None or isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
                    raise TypeError(f"{hook_name}() must return a list of classes, got {classes!r}")
                for cls in list(classes):
                    if not (isinstance(cls, type) and issubclass(cls, base)):
                        raise TypeError(f"{hook_name}() returned {cls!r}, not a {base.__name__} subclass")
                    if not isinstance(cls.name, str) or not cls.name:
                        raise TypeError(f"{cls.__qualname__} has no `name`")
                    _add(reg, PluginInfo(kind, cls.name, cls, origin, version,
                                         (cls.description or (cls.__doc__ or "").strip()).splitlines()[0]
                                         if (cls.description or cls.__doc__) else ""))
            except PluginConflictError:
                raise
            except Exception as exc:
                reg.failures.append(PluginFailure(source, _describe(exc)))


def _add(reg: Registry, info: PluginInfo) -> None:
    have = reg.plugins[info.kind].get(info.name)
    if have is not None and have.cls is not info.cls:
        raise PluginConflictError(
            f"two {info.kind.replace('_', ' ')} plugins are named {info.name!r}: one from {have.origin}, "
            f"one from {info.origin}; rename one of them")
    reg.plugins[info.kind][info.name] = info


def discover(plugins_dirs: list[Path] | tuple[Path, ...] = (), confine: bool = False,
             hide: list[str | Path] | tuple[str | Path, ...] = ()) -> Registry:
    """Find every plugin: entry points of group ``metabench`` first, then ``*.py`` in ``plugins_dirs``.

    ``confine``: import the outside sources (entry points of other distributions, ``--plugins-dir``
    files) in a sandbox first, with the default data root and cache folder and the folders ``hide``
    hidden, and register their task generators and algorithms as stand-ins
    (:mod:`metabench.engine.plugin_probe`), so that their code never runs in this process; a source that
    provides a dataset is then imported here. Without a working sandbox, ``confine`` is ignored (runs are
    not sealed there either, and say so). The built-ins come from the core's own source tree when it has one
    (:mod:`metabench.engine.builtin_plugins`)."""
    eps = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.dist.name if e.dist else "", e.name))
    builtin_plugins.bind(eps)
    reg, pm = Registry(plugins_dirs=tuple(str(Path(d).resolve()) for d in plugins_dirs)), _new_manager()
    sources: list[dict] = []  # every source, in discovery order: {"kind", "source", ...}
    for ep in eps:
        dist = ep.dist.name if ep.dist else "metabench"
        sources.append({"kind": "entry_point", "name": ep.name, "value": ep.value, "dist": dist,
                        "version": ep.dist.version if ep.dist else None,
                        "source": f"entry point {ep.name!r} ({ep.value}) of {dist}", "ep": ep})
    for d in plugins_dirs:
        d = Path(d)
        if not d.is_dir():
            reg.failures.append(PluginFailure(str(d), "plugins directory does not exist"))
            continue
        for path in sorted(d.glob("*.py")):
            if not path.name.startswith("_"):
                source = str(path.resolve())
                sources.append({"kind": "file", "path": source, "source": source, "dist": None, "version": None})
    described: dict[str, dict] = {}
    outside = [s for s in sources if s["dist"] not in plugin_probe.TRUSTED_DISTS]
    if confine and outside and sandbox.available()[0]:
        from metabench.engine.paths import default_cache_dir, default_data_root

        hidden = [default_data_root(), default_cache_dir(), *hide]
        wire = [{k: v for k, v in s.items() if k != "ep"} for s in outside]
        described = {d["source"]: d for d in plugin_probe.probe(wire, hidden)}
    for s in sources:
        origin = s["dist"] if s["kind"] == "entry_point" else f"file {s['source']}"
        d = described.get(s["source"])
        if d is not None:
            if "error" in d:
                reg.failures.append(PluginFailure(s["source"], f"{d['error']} (imported in a sandbox)"))
                continue
            if not d["datasets"]:  # only generators and algorithms: stand-ins, the code stays out
                _add_described(reg, s, d, origin)
                continue
        try:
            module = s["ep"].load() if s["kind"] == "entry_point" else _import_file(Path(s["path"]))
        except BaseException as exc:  # a plugin file may even call sys.exit
            if isinstance(exc, KeyboardInterrupt):
                raise
            reg.failures.append(PluginFailure(s["source"], _describe(exc)))
            continue
        _collect(reg, pm, module, s["source"], origin, s["version"])
    return reg


def _add_described(reg: Registry, s: dict, d: dict, origin: str) -> None:
    """Register the stand-ins of a source imported in the sandbox, its digests checked against its files."""
    reg.failures.extend(PluginFailure(src, err) for src, err in d["failures"])
    for meta in d["plugins"]:
        try:
            plugin_probe.check_digest(meta, s)
            cls = plugin_probe.stand_in(meta)
        except Exception as exc:
            reg.failures.append(PluginFailure(s["source"], _describe(exc)))
            continue
        _add(reg, PluginInfo(meta["kind"], cls.name, cls, origin, s["version"],
                             (cls.description or cls.__doc__ or "").strip().splitlines()[0]
                             if (cls.description or cls.__doc__) else ""))
