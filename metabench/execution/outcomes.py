"""What happens to one run, decided in one place: skipped (its ``ok`` record exists and is not stale), ok,
or failed.

Every executor goes through :func:`done_outcome` to skip a finished run, and every ``failed`` record,
whether a plugin raised inside the run (:func:`run_one`) or a supervisor saw the run's worker die or
time out (:func:`write_failed`), is built by :func:`failed_record`.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metabench.engine import checkpoint, environment, memory
from metabench.engine.records import SCHEMA_VERSION, RecordError, read_record, write_record
from metabench.engine.runner import RunFailure, SuiteRunner
from metabench.engine.suite import RunSpec


@dataclass
class RunOutcome:
    """What happened to one run."""

    run_id: str
    status: str  # ok, failed or skipped
    path: Path
    error: str | None = None
    record: dict[str, Any] | None = None


@dataclass
class Existing:
    """The record already at a run's path, judged: ``record`` is an ``ok`` record to keep (the run is
    skipped), else None (the run runs); ``replaces`` says why a record there is replaced (corrupt, another
    schema version, stale), None when nothing is or a ``failed`` record is simply retried; ``verdict`` is
    the kept record's provenance verdict (:meth:`metabench.engine.provenance.Fingerprints.staleness`)."""

    record: dict[str, Any] | None = None
    replaces: str | None = None
    verdict: str | None = None


def existing(runner: SuiteRunner, spec: RunSpec) -> Existing:
    """Judge the record at ``spec``'s path. An ``ok`` record is kept when it is fresh, when it has no
    provenance (made before metabench recorded it: ``unknown``, kept unless ``--force``) and when today's
    plugins or data cannot be loaded to tell (``unverified``); a stale one is replaced."""
    path = runner.record_path(spec)
    try:
        rec = read_record(path)
    except FileNotFoundError:
        return Existing()
    except (OSError, RecordError) as exc:
        return Existing(replaces=str(exc) if isinstance(exc, RecordError) else f"{path}: unreadable ({exc})")
    if rec["status"] != "ok":
        return Existing()
    verdict, reasons = runner.fingerprints.staleness(rec)
    if verdict == "stale":
        return Existing(replaces=f"{path}: stale record ({'; '.join(reasons)})", verdict=verdict)
    return Existing(rec, verdict=verdict)


def done_outcome(runner: SuiteRunner, spec: RunSpec) -> RunOutcome | None:
    """A ``skipped`` outcome if ``spec``'s record is one to keep (:func:`existing`) and the runner does not
    ``force``; None when the run must run (no record, a failed, corrupt, other-version or stale one)."""
    if runner.settings.force or (rec := existing(runner, spec).record) is None:
        return None
    return RunOutcome(spec.run_id, "skipped", runner.record_path(spec), record=rec)


def failed_record(runner: SuiteRunner, spec: RunSpec, plugin: str | None, error: str, wall_s: float,
                  tb: str = "") -> dict[str, Any]:
    """The ``failed`` record of ``spec``: the error, the plugin (``kind:name``) blamed, the traceback."""
    dev = runner.settings.device
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": spec.run_id,
        "status": "failed",
        "error": error,
        "failed_plugin": plugin,
        "traceback": tb,
        "config": spec.config(),
        "evaluations": [],
        "speed": {"meta_train_tasks_per_s": None, "eval_tasks_per_s": None, "wall_s": wall_s,
                  "peak_mem_mb": memory.peak_mb(dev)},
        "environment": environment.describe(dev),
    }


def write_failed(runner: SuiteRunner, spec: RunSpec, plugin: str | None, error: str, wall_s: float,
                 tb: str = "") -> RunOutcome:
    """Write (atomically) and return a ``failed`` record for a failure seen by a supervisor (a run killed
    at its time limit, a worker process that died)."""
    record = failed_record(runner, spec, plugin, error, wall_s, tb)
    path = runner.record_path(spec)
    write_record(path, record)
    return RunOutcome(spec.run_id, "failed", path, error, record)


def run_one(runner: SuiteRunner, spec: RunSpec, label: str = "") -> RunOutcome:
    """Run ``spec`` in this process unless its ``ok`` record exists; always leaves a complete record or
    none. A plugin failure becomes a ``failed`` record naming the plugin; a failed run keeps its mid-run
    checkpoint (a re-run resumes from it), an ok one deletes it."""
    skipped = done_outcome(runner, spec)
    if skipped is not None:
        return skipped
    path = runner.record_path(spec)
    start = time.perf_counter()
    try:
        record = runner.execute(spec, label)
    except RunFailure as failure:
        cause = failure.__cause__ or failure
        tb = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__, limit=20))
        record = failed_record(runner, spec, failure.plugin, str(failure), time.perf_counter() - start, tb)
    write_record(path, record)
    if record["status"] == "ok":
        checkpoint.remove(checkpoint.checkpoint_path(runner.out_dir, spec.run_id))
    return RunOutcome(spec.run_id, record["status"], path, record.get("error"), record)
