"""One lock file per run, so that several ``metabench run`` processes (or machines) sharing a results folder
never run the same run at once.

A lock is ``RESULTS/<suite>/.<run id>.lock``, created with ``O_CREAT | O_EXCL`` (atomic on local file systems
and NFSv3+), holding the owner's host, pid, process start time and a random token. A lock is *stale*, and
is broken, when its owner is on this host and its process is gone (or the pid was reused), or when it is on
another host and its file has not been touched for :data:`STALE_AFTER_S` seconds; holders touch their locks
every :data:`HEARTBEAT_S` seconds from a background thread. Killing a holder (even with SIGKILL) therefore
never blocks a run for longer than it takes to notice the process is dead.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

HEARTBEAT_S = 30.0  # how often a holder touches its locks
STALE_AFTER_S = float(os.environ.get("METABENCH_LOCK_STALE_S", 600))  # for locks of other hosts
_UNREADABLE_GRACE_S = 30.0  # an empty/garbled lock younger than this may still be being written


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: field 22 of /proc/PID/stat), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def lock_path(out_dir: Path, run_id: str) -> Path:
    """Where the lock of run ``run_id`` lives (ignored by record readers: it is not ``*.json``)."""
    return Path(out_dir) / f".{run_id}.lock"


class RunLock:
    """A held lock; :meth:`release` removes it if it is still ours."""

    def __init__(self, path: Path, token: str) -> None:
        self.path, self.token = path, token

    def touch(self) -> None:
        """Refresh the file's mtime (the heartbeat other hosts look at)."""
        try:
            os.utime(self.path)
        except OSError:
            pass

    def release(self) -> None:
        """Remove the lock file if it still carries our token (never someone else's)."""
        info = _read(self.path)
        if info is not None and info.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        _KEEPER.forget(self)


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(path: Path) -> str:
    """``host:pid`` of a lock's holder, for messages."""
    info = _read(path) or {}
    return f"{info.get('host', '?')}:{info.get('pid', '?')}"


def is_stale(path: Path, now: float | None = None) -> bool:
    """True if the lock at ``path`` belongs to nobody alive (see the module docstring)."""
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return True
    info = _read(path)
    if info is None:
        return age > _UNREADABLE_GRACE_S
    if info.get("host") == socket.gethostname():
        pid = info.get("pid")
        if not isinstance(pid, int) or not _pid_alive(pid):
            return True
        start = info.get("start")
        return start is not None and _proc_start(pid) not in (None, start)
    return age > STALE_AFTER_S


def _break(path: Path) -> None:
    """Remove a stale lock without racing another breaker: move it aside, and put it back if what was moved
    turns out to be a fresh lock created in the meantime."""
    before = _read(path)
    aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    moved = _read(aside)
    if moved is not None and before is not None and moved.get("token") != before.get("token"):
        try:
            os.link(aside, path)  # a live lock was taken by mistake: restore it (fails if re-created)
        except OSError:
            pass
    aside.unlink(missing_ok=True)


def clear_stale(out_dir: Path, run_id: str) -> None:
    """Remove the lock of ``run_id`` if there is one and it is stale (tidying up after a killed holder)."""
    path = lock_path(out_dir, run_id)
    if path.exists() and is_stale(path):
        _break(path)


def try_acquire(out_dir: Path, run_id: str) -> RunLock | None:
    """Take the lock of ``run_id``, breaking a stale one; ``None`` if a live process holds it."""
    path = lock_path(out_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    pid = os.getpid()
    body = json.dumps({"host": socket.gethostname(), "pid": pid, "start": _proc_start(pid), "token": token,
                       "run_id": run_id, "since": time.time()}).encode()
    for _ in range(3):
        # SIGTERM waits while the file is made and registered: a terminated run releases what it holds
        # (release_all), so no lock may exist that is not registered yet
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                fd = None
            if fd is not None:
                try:
                    os.write(fd, body)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                lock = RunLock(path, token)
                _KEEPER.add(lock)
                return lock
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if not is_stale(path):
            return None
        _break(path)
    return None


def release_all() -> None:
    """Release every lock this process holds (a terminated ``run`` on its way out)."""
    for lock in _KEEPER.held():
        lock.release()


class _Keeper:
    """Touches every held lock every :data:`HEARTBEAT_S` seconds from one daemon thread."""

    def __init__(self) -> None:
        self._locks: set[RunLock] = set()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, lock: RunLock) -> None:
        with self._mutex:
            self._locks.add(lock)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="metabench-lock-heartbeat",
                                                daemon=True)
                self._thread.start()

    def held(self) -> list[RunLock]:
        with self._mutex:
            return list(self._locks)

    def forget(self, lock: RunLock) -> None:
        with self._mutex:
            self._locks.discard(lock)

    def _loop(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self._mutex:
                locks = list(self._locks)
            for lock in locks:
                lock.touch()


_KEEPER = _Keeper()
