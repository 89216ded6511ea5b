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


def discover(plugins_dirs: list[Path] | tuple[Path, ...] = ()) -> Registry:
    """Find every plugin: entry points of group ``metabench`` first, then ``*.py`` in ``plugins_dirs``."""
    reg, pm = Registry(plugins_dirs=tuple(str(Path(d).resolve()) for d in plugins_dirs)), _new_manager()
    eps = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.dist.name if e.dist else "", e.name))
    for ep in eps:
        dist = ep.dist.name if ep.dist else "metabench"
        version = ep.dist.version if ep.dist else None
        source = f"entry point {ep.name!r} ({ep.value}) of {dist}"
        try:
            module = ep.load()
        except Exception as exc:
            reg.failures.append(PluginFailure(source, _describe(exc)))
            continue
        _collect(reg, pm, module, source, dist, version)
    for d in plugins_dirs:
        d = Path(d)
        if not d.is_dir():
            reg.failures.append(PluginFailure(str(d), "plugins directory does not exist"))
            continue
        for path in sorted(d.glob("*.py")):
            if path.name.startswith("_"):
                continue
            source = str(path.resolve())
            try:
                module = _import_file(path)
            except BaseException as exc:  # a plugin file may even call sys.exit
                if isinstance(exc, KeyboardInterrupt):
                    raise
                reg.failures.append(PluginFailure(source, _describe(exc)))
                continue
            _collect(reg, pm, module, source, f"file {source}", None)
    return reg

