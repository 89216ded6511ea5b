"""Sealed runs, the supervisor's side: meta-training in a confined worker, evaluation through it.

:func:`train_sealed` starts :mod:`metabench.engine.sealed_worker` inside :mod:`metabench.engine.sandbox`,
hands it the training images (and, for a supervised generator only, their labels) and the plugin specs,
relays its checkpoints, and returns a :class:`WorkerAlgorithm`: a stand-in with ``predict``, ``embed``,
``cluster`` and ``state_dict`` that the ordinary evaluation code calls. The supervisor keeps the query
labels, scores, and writes every record; a worker that touched a hidden path or wrote outside its scratch
folder (a *violation*) fails the run even if its plugin carried on.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from metabench.contracts import PluginError
from metabench.engine import sandbox
from metabench.engine.sealed_protocol import Channel, ChannelClosed

PLUGIN_CACHE = {False: "sealed-unlabeled", True: "sealed-labeled"}  # per label access: no label crosses over


class SealedWorkerError(PluginError):
    """The sealed worker failed; ``plugin`` (``kind:name``) is the stage it was in."""

    def __init__(self, plugin: str | None, message: str, tb: str = "") -> None:
        super().__init__(message)
        self.plugin = plugin
        if tb:  # shown in the failed record's traceback, after the supervisor's
            self.add_note(f"--- in the sealed worker ---\n{tb}")


def supported() -> tuple[bool, str]:
    """Whether runs can be sealed here (bubblewrap works), and why not."""
    return sandbox.available()


def wanted(seal: bool | None, uses_labels: bool, confined: bool = False) -> bool:
    """Whether a run is to be sealed: ``seal`` True/False decides; None (the default) seals the runs of
    unsupervised generators where :func:`supported`, and warns loudly (once) where it is not. A run of an
    outside plugin discovered in a sandbox (``confined``: a stand-in, whose code this process never
    imported) is always sealed."""
    if confined:
        return True
    if seal is False:
        return False
    if seal is None and uses_labels:
        return False
    ok, why = supported()
    if not ok:
        _warn_unsealed(why)
    return ok


_WARNED: set[str] = set()


def _warn_unsealed(why: str) -> None:
    if why in _WARNED:
        return
    _WARNED.add(why)
    msg = (f"metabench: WARNING: runs are NOT sealed: {why}. Task generators and algorithms run in this "
           "process, where they could reach labels, the data and the records; records say `sealed: false`.")
    print(msg, file=sys.stderr)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


@dataclass
class Trained:
    """What meta-training in the worker gave: the losses so far, tasks drawn, seconds, the start step."""

    losses: list[float]
    tasks: int
    train_s: float
    start: int


class SealedWorker:
    """One run's confined worker process and its channel."""

    def __init__(self, *, hidden_dirs: list[Path], hidden_files: list[str], plugin_cache: Path,
                 device: torch.device) -> None:
        self.scratch = sandbox.Scratch("metabench-sealed-")
        work = self.scratch.work
        plugin_cache.mkdir(parents=True, exist_ok=True)
        self.writable = [str(work), str(plugin_cache)]
        self.hidden = [os.path.realpath(p) for p in [*hidden_dirs, *hidden_files]]
        to_worker, self_w = os.pipe()
        self_r, from_worker = os.pipe()
        argv = [sys.executable, "-m", "metabench.engine.sealed_worker", str(to_worker), str(from_worker)]
        cmd = self.scratch.command(argv, hidden_dirs=hidden_dirs, hidden_files=hidden_files,
                                   writable=[plugin_cache], device_nodes=device.type == "cuda")
        env = self.scratch.env(TORCHINDUCTOR_CACHE_DIR=str(work / "torchinductor"),
                               TRITON_CACHE_DIR=str(work / "triton"))
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(to_worker, from_worker), stdin=subprocess.DEVNULL,
                                         stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else None,
                                         env=env)
        finally:
            os.close(to_worker)
            os.close(from_worker)
        self.chan = Channel(self_r, self_w)
        self.plugin: str | None = None  # the stage the worker last reported
        self.on_stage: Callable[[str], Any] | None = None  # told of each stage the worker reports

    def send(self, *message: Any) -> None:
        """Send a message; a dead worker is a :class:`SealedWorkerError`."""
        try:
            self.chan.send(*message)
        except ChannelClosed:
            raise self._died() from None

    def recv(self) -> tuple[Any, ...]:
        """The next message that is not a stage report; raises on an error report or violations."""
        while True:
            try:
                msg = self.chan.recv()
            except ChannelClosed:
                raise self._died() from None
            if msg[0] == "stage":
                self.plugin = str(msg[1])
                if self.on_stage is not None:
                    self.on_stage(self.plugin)
                continue
            if msg[0] == "error":
                _, plugin, message, tb, violations = msg
                self.plugin = str(plugin)
                self._check(violations)
                raise SealedWorkerError(self.plugin, str(message), str(tb))
            return msg

    def _check(self, violations: Any) -> None:
        if violations:
            raise SealedWorkerError(self.plugin, "the plugin broke the seal of its worker: "
                                    + "; ".join(map(str, violations)))

    def _died(self) -> SealedWorkerError:
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        return SealedWorkerError(self.plugin, f"the sealed worker died (exit code {code})")

    def request(self, *message: Any) -> Any:
        """One evaluation request and its result."""
        self.send(*message)
        msg = self.recv()
        if msg[0] != "result" or len(msg) != 3:
            raise SealedWorkerError(self.plugin, f"the sealed worker answered {msg[0]!r} to {message[0]!r}")
        self._check(msg[2])
        return msg[1]

    def close(self) -> None:
        """Tell the worker to stop, make sure it has, and remove its scratch folder."""
        with contextlib.suppress(Exception):
            self.chan.send("close")
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.chan.close()
        self.scratch.cleanup()


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


class WorkerAlgorithm:
    """The trained algorithm as the evaluation code sees it: its class's ``name`` and clustering claim,
    every call answered by the worker."""

    def __init__(self, worker: SealedWorker, cls: type) -> None:
        self.worker, self.cls, self.name = worker, cls, cls.name

    def has_own_clustering(self) -> bool:
        """Whether the algorithm's class overrides ``cluster``."""
        return self.cls.has_own_clustering()

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                ways: int) -> Any:
        """Query logits, computed in the worker (which never sees the query labels)."""
        return self.worker.request("predict", support_x, support_y, query_x, int(ways))

    def embed(self, x: torch.Tensor) -> Any:
        """Features of ``x``, computed in the worker."""
        return self.worker.request("embed", x)

    def cluster(self, x: torch.Tensor, k: int) -> Any:
        """The algorithm's own cluster ids, computed in the worker."""
        return self.worker.request("cluster", x, int(k))

    def state_dict(self) -> dict[str, Any]:
        """The trained state (for ``--save-models``)."""
        state = self.worker.request("state")
        if not isinstance(state, dict):
            raise SealedWorkerError(self.worker.plugin, "state_dict() must return a dict")
        return state


def train_sealed(worker: SealedWorker, spec: dict[str, Any],
                 on_checkpoint: Callable[[dict[str, Any]], None] | None = None) -> Trained:
    """Send ``spec`` (see :mod:`metabench.engine.sealed_worker`) to ``worker`` and wait for meta-training
    to end, handing each checkpoint it sends to ``on_checkpoint``. The hidden folders must exist before
    the worker starts (one created later would be visible to it)."""
    worker.send("init", {**spec, "hidden": worker.hidden, "writable": worker.writable})
    while True:
        msg = worker.recv()
        if msg[0] == "checkpoint" and on_checkpoint is not None:
            on_checkpoint(msg[1])
        elif msg[0] == "trained":
            done = msg[1]
            worker._check(done.get("violations"))
            return Trained([float(x) for x in done["losses"]], int(done["tasks"]), float(done["train_s"]),
                           int(done["start"]))
        elif msg[0] != "checkpoint":
            raise SealedWorkerError(worker.plugin, f"unexpected message {msg[0]!r} from the sealed worker")
