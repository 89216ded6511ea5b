"""Where the runs of a suite execute: ``local``, ``process`` or ``ray``, behind one small interface.

* :class:`LocalExecutor` (``--executor local``, the default): this process, one run after another.
* :class:`ProcessExecutor` (``--executor process --workers N``): up to N runs at once, each in a fresh
  process (``spawn``: forking a process that holds torch's thread pools is unsafe) that runs exactly one run.
  ``--run-timeout`` kills a run's process at the limit. ``local`` with ``--run-timeout`` is this executor
  with one worker, since only a separate process can be stopped.
* :class:`RayExecutor` (``--executor ray``): one Ray task per run with its resource request
  (``--ray-cpus-per-run``, ``--ray-gpus-per-run``, fractions allowed), on a running cluster
  (``--address auto`` or an address) or on a local Ray started for the call. Ray is an optional extra.

Every executor yields :class:`~metabench.execution.outcomes.RunOutcome` objects as runs complete. Before running a run it
skips it if its ``ok`` record exists (unless ``force``), then takes the run's lock
(:mod:`metabench.execution.runlock`): a run held by another live process is reported ``skipped`` with
``error = "running elsewhere ..."``, so several executors can share one results folder. Workers are
top-level functions of picklable arguments (:class:`Job`) that build their own registry and
:class:`~metabench.engine.runner.SuiteRunner`; nothing is shared between runs, and every seed comes from the run's
identity, so a run gives the same record metrics whichever executor runs it.

**Threads.** CPU float reductions depend on the number of torch threads, so every executor gives each run
the same number (``--threads``; default: torch's default in the invoking process, i.e. the cores or
``$OMP_NUM_THREADS``). Records are then bit-identical across executors. ``--threads`` = cores / workers
avoids oversubscribing the CPU, at the price of last-bit differences from runs made with another count.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metabench.engine import memory
from metabench.engine.records import RecordError, read_record, write_record
from metabench.engine.registry import Registry, discover
from metabench.engine.runner import Settings, SuiteRunner
from metabench.engine.suite import RunSpec, Suite
from metabench.execution.outcomes import RunOutcome, done_outcome, run_one, write_failed
from metabench.execution.runlock import (RunLock, clear_stale, describe_holder, lock_path, release_all,
                                         try_acquire)

EXECUTORS = ("local", "process", "ray")
RAY_HINT = ('--executor ray needs Ray, an optional extra: pip install "metabench[ray]" '
            '(or pip install "ray>=2.9")')
STARTUP_LIMIT_S = 300.0  # a worker that has not started its run after this long is killed
_STAGE_BYTES = 256


class ExecutorError(RuntimeError):
    """An executor cannot be used as asked (Ray missing, a bad option); the message says what to do."""


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to run one run, all picklable."""

    suite: Suite
    spec: RunSpec
    settings: Settings
    plugins_dirs: tuple[str, ...] = ()
    label: str = ""
    threads: int | None = None
    run_timeout: float | None = None


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------- workers


def _worker_runner(job: Job) -> SuiteRunner:
    memory.keep_freed_heap()
    if job.threads:
        torch.set_num_threads(job.threads)
    s = job.settings
    registry = discover(job.plugins_dirs, confine=s.seal is not False,
                        hide=(s.results, s.data_root, s.cache_dir, *s.hide))
    return SuiteRunner(job.suite, registry, s)


def run_job(job: Job) -> RunOutcome:
    """Worker: run ``job`` in this process with a registry and runner of its own (no shared state)."""
    return run_one(_worker_runner(job), job.spec, job.label)


def _die_with_parent(parent_pid: int) -> None:
    """Make sure this worker does not outlive the process that supervises it (even one killed by SIGKILL)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
        return

    def watch() -> None:  # pragma: no cover - other platforms
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _child_main(job: Job, conn: Any, stage: Any, parent_pid: int) -> None:
    """Entry point of a spawned worker process: one run, its outcome sent back through ``conn``."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's business
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock, which a killed child leaks
    try:
        runner = _worker_runner(job)

        def on_stage(plugin: str) -> None:
            stage.value = plugin.encode("utf-8")[:_STAGE_BYTES - 1]

        runner.on_stage = on_stage
        conn.send(("started",))
        conn.send(("outcome", run_one(runner, job.spec, job.label)))
    except BaseException as exc:  # anything outside run_one's own handling (a broken plugin registry, ...)
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=20)))
    finally:
        conn.close()


class _Child:
    """One run in one spawned process, watched for its outcome, its death and its time limit."""

    def __init__(self, ctx: Any, job: Job, lock: RunLock | None) -> None:
        self.job, self.lock = job, lock
        self.stage = ctx.Array("c", _STAGE_BYTES, lock=False)
        self.conn, child_conn = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_child_main, args=(job, child_conn, self.stage, os.getpid()),
                                name=f"metabench-run-{job.spec.run_id[:60]}")
        self.spawned_wall = time.time()
        self.spawned = time.monotonic()
        self.started: float | None = None
        self.outcome: RunOutcome | None = None
        self.error: tuple[str, str] | None = None
        self.eof = False
        self.proc.start()
        child_conn.close()

    def waitables(self) -> list[Any]:
        """What :func:`multiprocessing.connection.wait` should watch for this child."""
        return [self.conn, self.proc.sentinel]

    def deadline(self, run_timeout: float | None) -> float:
        """Monotonic time at which this child must be killed if still running."""
        if self.started is None:
            return self.spawned + STARTUP_LIMIT_S
        return self.started + run_timeout if run_timeout else float("inf")

    def _drain(self) -> None:
        while not self.eof and self.conn.poll():
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                self.eof = True
                break
            if msg[0] == "started":
                self.started = time.monotonic()
            elif msg[0] == "outcome":
                self.outcome = msg[1]
            elif msg[0] == "error":
                self.error = (msg[1], msg[2])

    def _blame(self) -> str:
        stage = self.stage.value.decode("utf-8", errors="replace")
        return stage or f"algorithm:{self.job.spec.algorithm}"

    def poll(self, runner: SuiteRunner, run_timeout: float | None) -> RunOutcome | None:
        """The run's outcome if it is over (writing a ``failed`` record if the child could not), else None."""
        self._drain()
        spec = self.job.spec
        if self.outcome is not None:
            self.proc.join(10)
            if self.proc.is_alive():
                self.kill()
            return self.outcome
        now = time.monotonic()
        wall = now - (self.started or self.spawned)
        if self.error is not None or self.eof or not self.proc.is_alive():
            self.proc.join(10)
            self._drain()
            if self.outcome is not None:
                return self.outcome
            if self.error is not None:
                return write_failed(runner, spec, None, self.error[0], wall, self.error[1])
            written = self._record_written_by_child(runner)
            if written is not None:
                return written
            code = self.proc.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return write_failed(runner, spec, self._blame(), f"the run's worker process died ({how})", wall)
        if now >= self.deadline(run_timeout):
            self.kill()
            if self.started is None:
                return write_failed(runner, spec, None, f"the worker process did not start within "
                                                   f"{STARTUP_LIMIT_S:g} s", wall)
            return write_failed(runner, spec, self._blame(),
                           f"run exceeded --run-timeout of {run_timeout:g} s", wall)
        return None

    def _record_written_by_child(self, runner: SuiteRunner) -> RunOutcome | None:
        path = runner.record_path(self.job.spec)
        try:
            if path.stat().st_mtime < self.spawned_wall:
                return None
            record = read_record(path)
        except (OSError, RecordError):
            return None
        return RunOutcome(self.job.spec.run_id, record["status"], path, record.get("error"), record)

    def kill(self) -> None:
        """Stop the child now (its record is written atomically, so none or a whole one exists)."""
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)
        self.conn.close()


def run_with_timeout(job: Job) -> RunOutcome:
    """Supervisor for one job: run it in a spawned child and kill it at ``job.run_timeout`` (used by Ray
    tasks that have a time limit)."""
    runner = SuiteRunner(job.suite, Registry(), job.settings)
    child = _Child(mp.get_context("spawn"), job, None)
    try:
        while True:
            outcome = child.poll(runner, job.run_timeout)
            if outcome is not None:
                return outcome
            wait = max(0.0, min(child.deadline(job.run_timeout) - time.monotonic(), 5.0))
            mp.connection.wait(child.waitables(), timeout=wait)
    finally:
        child.kill()


# ---------------------------------------------------------------------------------------- executors


def claim(runner: SuiteRunner, spec: RunSpec) -> tuple[RunOutcome | None, RunLock | None]:
    """Decide whether this executor runs ``spec``: ``(skipped outcome, None)`` if its ``ok`` record exists
    (and not ``force``) or another live process holds its lock, else ``(None, lock)`` with the lock held."""
    path = runner.record_path(spec)
    if (skipped := done_outcome(runner, spec)) is not None:
        clear_stale(runner.out_dir, spec.run_id)  # its holder was killed after writing the record
        return skipped, None
    lock = try_acquire(runner.out_dir, spec.run_id)
    if lock is None:
        holder = describe_holder(lock_path(runner.out_dir, spec.run_id))
        return RunOutcome(spec.run_id, "skipped", path, error=f"running elsewhere: {holder}"), None
    if (skipped := done_outcome(runner, spec)) is not None:  # finished by another process meanwhile
        lock.release()
        return skipped, None
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-write; ours now
        tmp.unlink(missing_ok=True)
    return None, lock


class Executor(ABC):
    """Runs the specs of a suite and yields their outcomes as they complete."""

    name = ""

    @abstractmethod
    def execute(self, runner: SuiteRunner, specs: Sequence[RunSpec]) -> Iterator[RunOutcome]:
        """Run (or skip) each of ``specs`` for ``runner``'s suite and settings; yield outcomes as they come."""


class LocalExecutor(Executor):
    """This process, one run after another (datasets stay loaded between runs); ``threads``: torch threads
    while it runs (default: leave them as they are)."""

    name = "local"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def execute(self, runner: SuiteRunner, specs: Sequence[RunSpec]) -> Iterator[RunOutcome]:
        """Run each spec with ``runner.run_one`` under its lock."""
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            for i, spec in enumerate(specs):
                skipped, lock = claim(runner, spec)
                if skipped is not None:
                    yield skipped
                    continue
                try:
                    outcome = run_one(runner, spec, label=f"[{i + 1}/{len(specs)}]")
                finally:
                    lock.release()
                yield outcome
        finally:
            torch.set_num_threads(before)


class ProcessExecutor(Executor):
    """Up to ``workers`` runs at once on this machine, each in a fresh spawned process.

    ``threads``: torch threads per worker (default: this process's, see the module docstring).
    ``run_timeout``: seconds a run may
    take, counted from when its worker has started (imports done), after which it is killed and gets a
    ``failed`` record blaming the plugin stage it was in.
    """

    name = "process"

    def __init__(self, workers: int | None = None, threads: int | None = None,
                 run_timeout: float | None = None, plugins_dirs: Sequence[str | Path] = ()) -> None:
        self.workers = max(1, workers or available_cores())
        self.threads = threads or torch.get_num_threads()
        self.run_timeout = run_timeout
        self.plugins_dirs = tuple(str(Path(d).resolve()) for d in plugins_dirs)

    def execute(self, runner: SuiteRunner, specs: Sequence[RunSpec]) -> Iterator[RunOutcome]:
        """Keep ``workers`` children busy; yield each run's outcome when its child is done."""
        ctx = mp.get_context("spawn")
        queue = deque(enumerate(specs))
        running: list[_Child] = []
        try:
            while queue or running:
                while queue and len(running) < self.workers:
                    i, spec = queue.popleft()
                    skipped, lock = claim(runner, spec)
                    if skipped is not None:
                        yield skipped
                        continue
                    job = Job(runner.suite, spec, runner.settings, self.plugins_dirs,
                              f"[{i + 1}/{len(specs)}]", self.threads, self.run_timeout)
                    try:
                        running.append(_Child(ctx, job, lock))
                    except BaseException:
                        lock.release()
                        raise
                if not running:
                    continue
                timeout = min(c.deadline(self.run_timeout) for c in running) - time.monotonic()
                mp.connection.wait([w for c in running for w in c.waitables()],
                                   timeout=max(0.0, min(timeout, 5.0)))
                for child in list(running):
                    outcome = child.poll(runner, self.run_timeout)
                    if outcome is not None:
                        running.remove(child)
                        child.lock.release()
                        yield outcome
        finally:  # interrupted (Ctrl-C, SIGTERM, an error): stop the children and free their runs
            for child in running:
                child.kill()
                child.lock.release()


def import_ray() -> Any:
    """The ``ray`` module, or :class:`ExecutorError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(RAY_HINT) from None
    return ray


def _ray_task(job: Job) -> RunOutcome:
    """A Ray task: one run (in a child process it can kill, if the run has a time limit)."""
    return run_with_timeout(job) if job.run_timeout else run_job(job)


class RayExecutor(Executor):
    """One Ray task per run, with ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (fractions allowed).

    Connects to ``address`` (``"auto"``: the cluster this machine belongs to) or, without one, starts a
    local Ray with ``workers`` CPUs (default: all cores) for the call and stops it afterwards. ``threads``:
    torch threads per run (default: this process's; set it to ``cpus_per_run`` for speed). A Ray already
    initialised in this process is used as it is. Workers write records to the results path they are given;
    the driver also writes each returned record there, so a cluster without a shared file system works too.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_run: float = 1.0,
                 gpus_per_run: float | None = None, run_timeout: float | None = None,
                 plugins_dirs: Sequence[str | Path] = (), threads: int | None = None) -> None:
        self.address, self.workers = address, workers
        self.threads = threads or torch.get_num_threads()
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run
        self.run_timeout = run_timeout
        self.plugins_dirs = tuple(str(Path(d).resolve()) for d in plugins_dirs)

    def _init(self, ray: Any) -> bool:
        if ray.is_initialized():
            return False
        try:
            if self.address:
                ray.init(address=self.address, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=self.workers or available_cores(), include_dashboard=False,
                         logging_level=logging.WARNING)
        except Exception as exc:  # no cluster at that address, a port in use, ...
            where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray"
            raise ExecutorError(f"could not start or reach {where}: {type(exc).__name__}: {exc}") from None
        return True

    def execute(self, runner: SuiteRunner, specs: Sequence[RunSpec]) -> Iterator[RunOutcome]:
        """Submit every run not done or held elsewhere, then yield outcomes as tasks finish."""
        ray = import_ray()
        started = self._init(ray)
        gpus = self.gpus_per_run
        if gpus is None:
            gpus = 1.0 if runner.settings.device.type == "cuda" else 0.0
        task = ray.remote(num_cpus=self.cpus_per_run, num_gpus=gpus, max_retries=0)(_ray_task)
        threads = self.threads
        pending: dict[Any, tuple[RunSpec, RunLock, float]] = {}
        try:
            for i, spec in enumerate(specs):
                skipped, lock = claim(runner, spec)
                if skipped is not None:
                    yield skipped
                    continue
                job = Job(runner.suite, spec, runner.settings, self.plugins_dirs, f"[{i + 1}/{len(specs)}]",
                          threads, self.run_timeout)
                pending[task.options(name=f"metabench {spec.run_id}").remote(job)] = \
                    (spec, lock, time.monotonic())
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                spec, lock, t0 = pending.pop(ref)
                try:
                    outcome = self._collect(ray, runner, spec, ref, t0)
                finally:
                    lock.release()
                yield outcome
        finally:
            for ref, (spec, lock, _) in pending.items():
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
                lock.release()
            if started:
                ray.shutdown()

    @staticmethod
    def _collect(ray: Any, runner: SuiteRunner, spec: RunSpec, ref: Any, t0: float) -> RunOutcome:
        try:
            outcome: RunOutcome = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the task or its worker died
            return write_failed(runner, spec, f"algorithm:{spec.algorithm}", f"ray task failed: {exc}",
                           time.monotonic() - t0)
        path = runner.record_path(spec)
        if outcome.record is not None:
            try:
                same = read_record(path) == outcome.record
            except (OSError, RecordError):
                same = False
            if not same:  # the worker wrote to a file system this machine does not see
                write_record(path, outcome.record)
        return RunOutcome(outcome.run_id, outcome.status, path, outcome.error, outcome.record)


def make_executor(kind: str = "local", *, workers: int | None = None, address: str | None = None,
                  run_timeout: float | None = None, ray_cpus_per_run: float = 1.0,
                  ray_gpus_per_run: float | None = None, threads: int | None = None,
                  plugins_dirs: Sequence[str | Path] = ()) -> Executor:
    """The executor the ``run`` command's options ask for; :class:`ExecutorError` on a bad combination.
    ``threads``: torch threads of every run (default: this process's, the same for every executor)."""
    if kind not in EXECUTORS:
        raise ExecutorError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ExecutorError(f"--workers must be >= 1, got {workers}")
    if run_timeout is not None and run_timeout <= 0:
        raise ExecutorError(f"--run-timeout must be > 0 seconds, got {run_timeout}")
    if threads is not None and threads < 1:
        raise ExecutorError(f"--threads must be >= 1, got {threads}")
    if kind == "ray":
        import_ray()
        if ray_cpus_per_run <= 0 or (ray_gpus_per_run is not None and ray_gpus_per_run < 0):
            raise ExecutorError("--ray-cpus-per-run must be > 0 and --ray-gpus-per-run >= 0")
        return RayExecutor(address, workers, ray_cpus_per_run, ray_gpus_per_run, run_timeout, plugins_dirs,
                           threads)
    if address is not None:
        raise ExecutorError("--address is for --executor ray")
    if kind == "process":
        return ProcessExecutor(workers, threads, run_timeout, plugins_dirs)
    if workers not in (None, 1):
        raise ExecutorError("--workers is for --executor process or ray; local runs one run at a time")
    if run_timeout is not None:  # only a separate process can be stopped at a time limit
        return ProcessExecutor(1, threads, run_timeout, plugins_dirs)
    return LocalExecutor(threads)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """While active (in the main thread), SIGTERM raises ``SystemExit(143)``, so a terminated ``metabench
    run`` still kills its workers and releases its run locks on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except SystemExit:
        release_all()  # a lock taken just before the signal, outside any run's own clean-up
        raise
    finally:
        signal.signal(signal.SIGTERM, old)


def check_suite_plugins(suite: Suite, registry: Registry) -> None:
    """Fail early (before any run) if the suite names an unknown plugin or an unknown option."""
    for kind, names in (("dataset", suite.datasets), ("task_generator", suite.task_generators),
                        ("algorithm", suite.algorithms)):
        for name in names:
            registry.resolve(kind, name, suite.options_for(name))


def run_suite(runner: SuiteRunner, executor: Executor | None = None, only: Sequence[str] = (),
              on_outcome: Callable[[RunOutcome], None] | None = None) -> list[RunOutcome]:
    """Run (or skip) every run of ``runner``'s suite on ``executor`` (default: this process, one run after
    another); ``on_outcome`` hears of each run as it completes. ``only``: shell patterns; when given, just
    the runs whose id matches one of them. Returns the outcomes in suite order."""
    check_suite_plugins(runner.suite, runner.registry)
    runs = runner.runs(tuple(only))
    done: dict[str, RunOutcome] = {}
    for outcome in (executor or LocalExecutor()).execute(runner, runs):
        done[outcome.run_id] = outcome
        if on_outcome is not None:
            on_outcome(outcome)
    return [done[spec.run_id] for spec in runs if spec.run_id in done]
