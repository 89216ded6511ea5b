"""The sealed worker: meta-trains one run's task generator and algorithm, then serves evaluation requests.

Started by :mod:`metabench.engine.sealed` inside :mod:`metabench.engine.sandbox`, one fresh process per
run (``python -m metabench.engine.sealed_worker READ_FD WRITE_FD``). It receives the training images (with labels only for a supervised generator) and the plugin specs, never query labels; it cannot see the data root, the cache or
the results, and can write only its scratch and plugin-cache folders. An audit hook turns every attempt at
a hidden path, and every write or deletion outside the writable folders, into a *violation*: the attempt
raises ``PermissionError`` and every reply carries the list, so the supervisor fails the run even when the
plugin swallowed the error.

Messages (:mod:`metabench.engine.sealed_protocol`): in ``("init", spec)``; out ``("stage", plugin)``,
``("checkpoint", state)``, ``("trained", summary)`` (an init with ``restore`` loads a kept model instead
of training: ``("trained", ...)`` at once); then in ``("predict", sx, sy, qx, ways)``,
``("embed", x)``, ``("cluster", x, k)``, ``("state",)``, ``("close",)``, each answered by
``("result", value, violations)``; any failure by ``("error", plugin, message, traceback, violations)``.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# deleting or moving anything outside the writable folders is a violation
_DESTRUCTIVE = {"os.remove": 1, "os.rmdir": 1, "os.rename": 2, "os.truncate": 1, "shutil.rmtree": 1}
# changing anything under a hidden path is; elsewhere the read-only mount refuses it (libraries try caches)
_CHANGING = {"os.mkdir": 1, "os.link": 2, "os.symlink": 2, "os.chmod": 1, "os.chown": 1, "os.utime": 1}


class Guard:
    """The worker's audit hook: hidden paths may not be touched, nothing outside ``writable`` deleted or
    moved. (Other writes outside ``writable`` are refused by the read-only mount, not counted: libraries
    try to create caches and cope with the refusal.)"""

    def __init__(self, hidden: list[str], writable: list[str]) -> None:
        self.hidden = [p.rstrip("/") for p in hidden]
        self.writable = [p.rstrip("/") for p in writable] + ["/dev", "/proc/self"]
        self.violations: list[str] = []

    @staticmethod
    def _under(path: str, roots: list[str]) -> bool:
        return any(path == r or path.startswith(r + "/") for r in roots)

    def _path(self, p: Any) -> str | None:
        if isinstance(p, int) or p is None:
            return None
        try:
            return os.path.realpath(os.fsdecode(p))
        except (TypeError, ValueError):
            return None

    def _deny(self, what: str) -> None:
        if len(self.violations) < 20:
            self.violations.append(what)
        raise PermissionError(f"sealed worker: {what}")

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path = self._path(args[0])
            if path is None:
                return
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
            if self._under(path, self.writable):
                return
            if self._under(path, self.hidden):
                self._deny(f"opened hidden path {path}" + (" for writing" if writing else ""))
        elif event in ("os.listdir", "os.scandir"):
            path = self._path(args[0] if args else ".")
            if path is not None and self._under(path, self.hidden) and not self._under(path, self.writable):
                self._deny(f"listed hidden folder {path}")
        elif event in _DESTRUCTIVE or event in _CHANGING:
            for p in args[:_DESTRUCTIVE.get(event) or _CHANGING[event]]:
                path = self._path(p)
                if path is None or self._under(path, self.writable):
                    continue
                if event in _DESTRUCTIVE or self._under(path, self.hidden):
                    self._deny(f"{event.split('.')[-1]} {path} outside the scratch folder")


def _train(chan: Any, spec: dict[str, Any], guard: Guard, stage: Any) -> Any:
    """Set up the generator and algorithm of ``spec``, meta-train, report; returns the algorithm."""
    import torch

    from metabench.contracts import Budget, LabeledSplit, RunContext, UnlabeledSplit
    from metabench.engine import checkpoint, memory
    from metabench.engine.registry import discover
    from metabench.engine.training import sync, task_stream
    from metabench.names import base_name
    from metabench.seeding import make_generator

    memory.keep_freed_heap()
    torch.set_num_threads(int(spec["threads"]))
    dev = torch.device(spec["device"])
    registry = discover(spec["plugins_dirs"])
    gen, alg = spec["generator"], spec["algorithm"]
    image_shape = tuple(spec["image_shape"])
    cache_dir = Path(spec["cache_dir"]) if spec["cache_dir"] else None
    images = spec["images"].to(dev)
    labels = spec.get("labels")
    with stage(f"task_generator:{gen['entry']}"):
        gen_cls = registry.get("task_generator", base_name(gen["entry"])).cls
        generator = gen_cls()
        gctx = RunContext(dev, gen["seed"], *gen["shape"], image_shape, gen["options"], cache_dir,
                          dataset=spec["dataset"], augmentation=spec["augmentation"])
        generator.setup(LabeledSplit(images, labels.to(dev)) if generator.uses_labels and labels is not None
                        else UnlabeledSplit(images), gctx)
    with stage(f"algorithm:{alg['entry']}"):
        algorithm = registry.get("algorithm", base_name(alg["entry"])).cls()
        actx = RunContext(dev, alg["seed"], *alg["shape"], image_shape, alg["options"], cache_dir,
                          unlabeled=UnlabeledSplit(images), dataset=spec["dataset"],
                          augmentation=spec["augmentation"])
        algorithm.setup(actx)
    episode_gen = make_generator(spec["episode_seed"], dev)
    checked = {"n": 0, "tasks": 0}
    start, prior, prior_s = 0, [], 0.0
    saved = spec.get("resume")
    if saved is not None:
        with stage(f"algorithm:{alg['entry']}"):
            algorithm.load_state_dict(saved["algorithm"])
        episode_gen.set_state(saved["episode_gen"])
        checkpoint.set_rng_state(saved["rng"], dev)
        start, prior, prior_s = saved["step"], list(saved["losses"]), saved["train_s"]
        checked["tasks"] = saved["tasks"]
    every = spec.get("checkpoint_every") if getattr(algorithm, "resumable", False) else None
    losses, mark = list(prior), [time.monotonic()]
    sync(dev)
    t0 = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        if every is None:
            return
        losses.append(loss)
        if time.monotonic() - mark[0] < every:
            return
        sync(dev)
        chan.send("checkpoint", {"step": step + 1, "losses": list(losses),
                                 "train_s": prior_s + time.perf_counter() - t0, "tasks": checked["tasks"],
                                 "algorithm": algorithm.state_dict(), "episode_gen": episode_gen.get_state(),
                                 "rng": checkpoint.rng_state(dev)})
        mark[0] = time.monotonic()

    stream = task_stream(generator, gen["entry"], alg["entry"], spec["meta_batch"], tuple(gen["shape"]),
                         image_shape, episode_gen, stage, checked)
    with stage(f"algorithm:{alg['entry']}"):
        new = algorithm.meta_train(stream, Budget(spec["steps"], spec["meta_batch"], start), on_step=on_step)
    sync(dev)
    chan.send("trained", {"losses": prior + [float(x) for x in new], "tasks": checked["tasks"],
                          "train_s": prior_s + time.perf_counter() - t0, "start": start,
                          "violations": list(guard.violations)})
    return algorithm


def _restore(chan: Any, spec: dict[str, Any], guard: Guard, stage: Any) -> Any:
    """Set up the algorithm of ``spec`` as a kept model's run did (``spec["restore"]``: its saved context and
    trained state; ``metabench evaluate``), report it as trained (no steps), and return it."""
    import torch

    from metabench.contracts import UnlabeledSplit
    from metabench.engine import memory
    from metabench.engine.models import setup_context
    from metabench.engine.registry import discover
    from metabench.names import base_name

    memory.keep_freed_heap()
    torch.set_num_threads(int(spec["threads"]))
    dev = torch.device(spec["device"])
    registry = discover(spec["plugins_dirs"])
    entry = spec["algorithm"]["entry"]
    cache_dir = Path(spec["cache_dir"]) if spec["cache_dir"] else None
    with stage(f"algorithm:{entry}"):
        cls = registry.get("algorithm", base_name(entry)).cls
        algorithm = cls()
        algorithm.setup(setup_context(spec["restore"]["context"], cls, dev, cache_dir,
                                      UnlabeledSplit(spec["images"].to(dev))))
        algorithm.load_state_dict(spec["restore"]["state"])
    chan.send("trained", {"losses": [], "tasks": 0, "train_s": 0.0, "start": 0,
                          "violations": list(guard.violations)})
    return algorithm


def _serve(chan: Any, algorithm: Any, stage: Any, alg_entry: str, guard: Guard) -> None:
    """Answer evaluation requests until ``close``."""
    import torch

    def out(x: Any) -> Any:
        return x.detach() if isinstance(x, torch.Tensor) else x

    while True:
        msg = chan.recv()
        kind = msg[0]
        if kind == "close":
            return
        with stage(f"algorithm:{alg_entry}"):
            if kind == "predict":
                value = out(algorithm.predict(*msg[1:5]))
            elif kind == "embed":
                value = out(algorithm.embed(msg[1]))
            elif kind == "cluster":
                value = out(algorithm.cluster(msg[1], msg[2]))
            elif kind == "state":
                value = algorithm.state_dict()
            elif kind == "peak_mem":     # this process's peak memory (MiB) on the given device, since it started
                from metabench.engine import memory
                value = memory.peak_mb(torch.device(msg[1]))
            else:
                raise ValueError(f"unknown request {kind!r}")
        chan.send("result", value, list(guard.violations))


def run_worker(read_fd: int, write_fd: int) -> int:
    """One run: ``("init", spec)`` on ``read_fd``, then training and serving (see the module docstring)."""
    from metabench.engine.sealed_protocol import Channel, ChannelClosed
    from metabench.engine.training import Stage

    chan = Channel(read_fd, write_fd)
    kind, spec = chan.recv()
    if kind != "init":
        return 2
    guard = Guard(spec["hidden"], spec["writable"])
    sys.addaudithook(guard)
    last: list[str | None] = [None]

    def on_enter(plugin: str) -> None:  # the supervisor blames a failure or a timeout on this stage
        if plugin != last[0]:
            last[0] = plugin
            chan.send("stage", plugin)

    stage = Stage(on_enter)
    try:
        setup = _restore if spec.get("restore") is not None else _train
        algorithm = setup(chan, spec, guard, stage)
        _serve(chan, algorithm, stage, spec["algorithm"]["entry"], guard)
    except ChannelClosed:
        return 1
    except BaseException as exc:  # a plugin raised (or exited): report it, blamed on its stage
        plugin = stage.plugin or last[0] or f"algorithm:{spec['algorithm']['entry']}"
        try:
            chan.send("error", plugin, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=20),
                      list(guard.violations))
        except Exception:
            pass
        return 1
    finally:
        chan.close()
    return 0


def main(argv: list[str]) -> int:
    """Entry point: ``READ_FD WRITE_FD``; the init message names the hidden and the writable paths, and the
    audit hook is installed before any plugin is imported."""
    sys.dont_write_bytecode = True
    if len(argv) != 2:
        print("usage: python -m metabench.engine.sealed_worker READ_FD WRITE_FD", file=sys.stderr)
        return 2
    code = run_worker(int(argv[0]), int(argv[1]))
    os._exit(code)  # nothing to tidy: skip the interpreter's (slow) teardown


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
