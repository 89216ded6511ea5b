"""Kernel confinement of a sealed worker with bubblewrap (``bwrap``), and the files a dataset reads.

Why bubblewrap: it is a small, maintained Debian/Ubuntu/Fedora package that needs no Python binding, runs
unprivileged where user namespaces are allowed, and expresses exactly what a sealed worker needs in mount
terms: the root file system read-only, the data root, the cache folder, the results folder and a dataset's
own files replaced by empty read-only mounts, one scratch folder (and a cache folder for the worker's own
label-free artefacts) writable, no network, its own PID/IPC namespaces, no capabilities, and death with
its parent. Landlock would give path rules too, but only read/write restrictions (no hiding by mount, no
network or PID isolation) and only through a third-party binding.

:func:`available` probes once whether ``bwrap`` can run here (a container may forbid user namespaces);
:func:`command` builds the ``bwrap`` argv; :class:`Scratch` is the scratch folder, argv and environment of
one sandboxed child (a probe, a sealed worker, a sandboxed bench); :func:`opened_files` records the data
files a dataset plugin opens while it loads (e.g. a bundled dataset inside an installed package), so that
they are hidden too.
"""
from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_CODE_SUFFIXES = (".py", ".pyc", ".so", ".pth")


@functools.lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    """``(True, "")`` if ``bwrap`` confines a process here, else ``(False, why)``."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        probe = subprocess.run([exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                                "--unshare-all", "--cap-drop", "ALL", "--die-with-parent", "true"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bwrap could not start: {exc}"
    if probe.returncode != 0:
        return False, ("bwrap cannot create its namespaces here (unprivileged user namespaces off?): "
                       + probe.stderr.decode(errors="replace").strip()[:300])
    return True, ""


def _existing(paths: Iterable[str | Path]) -> list[str]:
    out = []
    for p in paths:
        p = os.path.realpath(p)
        if os.path.exists(p) and p not in out:
            out.append(p)
    return out


def command(argv: Sequence[str], *, hidden_dirs: Iterable[str | Path], hidden_files: Iterable[str | Path],
            writable: Iterable[str | Path], empty_file: str | Path, cwd: str | Path,
            device_nodes: bool = False) -> list[str]:
    """The ``bwrap`` argv running ``argv`` with ``/`` read-only, each of ``hidden_dirs`` an empty
    read-only folder, each of ``hidden_files`` the (empty) ``empty_file``, each of ``writable`` (existing
    folders) writable, no network, no capabilities; ``device_nodes``: also the GPU device nodes."""
    cmd = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/dev/shm",
           "--unshare-all", "--cap-drop", "ALL", "--die-with-parent", "--new-session"]
    if device_nodes:
        for node in sorted(glob.glob("/dev/nvidia*") + glob.glob("/dev/dri")):
            cmd += ["--dev-bind", node, node]
    dirs = _existing(hidden_dirs)
    for d in dirs:
        cmd += ["--tmpfs", d]
    for f in _existing(hidden_files):  # a file inside a hidden folder is gone already
        if os.path.isfile(f) and not any(f.startswith(d.rstrip("/") + "/") for d in dirs):
            cmd += ["--ro-bind", str(empty_file), f]
    for w in _existing(writable):
        cmd += ["--bind", w, w]
    for d in dirs:  # after the writable binds, whose mount points may lie inside a hidden folder
        cmd += ["--remount-ro", d]
    return cmd + ["--chdir", str(cwd), "--", *argv]


class Scratch:
    """The scratch of one sandboxed child: a temporary folder holding ``work`` (writable inside the sandbox,
    the child's ``TMPDIR``) and the empty file that stands in for hidden files. Removed by :meth:`cleanup`
    (or on leaving a ``with`` block)."""

    def __init__(self, prefix: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
        self.work = Path(self._tmp.name) / "work"
        self.work.mkdir()
        self._empty = Path(self._tmp.name) / ".hidden"
        self._empty.write_bytes(b"")

    def command(self, argv: Sequence[str], *, hidden_dirs: Iterable[str | Path],
                hidden_files: Iterable[str | Path] = (), writable: Iterable[str | Path] = (),
                device_nodes: bool = False) -> list[str]:
        """:func:`command` for ``argv`` run from the current folder, ``work`` writable besides ``writable``."""
        return command(argv, hidden_dirs=hidden_dirs, hidden_files=hidden_files,
                       writable=[self.work, *writable], empty_file=self._empty, cwd=os.getcwd(),
                       device_nodes=device_nodes)

    def env(self, **extra: str) -> dict[str, str]:
        """The child's environment: this one's, temporary files in ``work``, no bytecode written."""
        return {**os.environ, "TMPDIR": str(self.work), "PYTHONDONTWRITEBYTECODE": "1", **extra}

    def cleanup(self) -> None:
        """Remove the scratch folder."""
        self._tmp.cleanup()

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class _OpenedFiles:
    """A process-wide audit hook (installed once) that, while active, notes files opened outside imports."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: list[set[str]] | None = None
        self.installed = False

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or self.active is None or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.fsdecode(args[0])
        if path.endswith(_CODE_SUFFIXES):
            return
        f = sys._getframe(1)
        while f is not None:  # an import reading its package's data is code, not the dataset
            if f.f_code.co_filename.startswith("<frozen importlib"):
                return
            f = f.f_back
        for seen in self.active:
            seen.add(os.path.realpath(path))


_OPENED = _OpenedFiles()


def opened_files(load: Callable[[], T]) -> tuple[T, list[str]]:
    """``load()``'s result and the regular files it opened (imports excluded), e.g. a dataset's sources."""
    with _OPENED.lock:
        if not _OPENED.installed:
            sys.addaudithook(_OPENED.hook)
            _OPENED.installed = True
        seen: set[str] = set()
        _OPENED.active = [*(_OPENED.active or []), seen]
    try:
        value = load()
    finally:
        with _OPENED.lock:
            rest = [s for s in _OPENED.active or [] if s is not seen]
            _OPENED.active = rest or None
    return value, sorted(p for p in seen if os.path.isfile(p))
