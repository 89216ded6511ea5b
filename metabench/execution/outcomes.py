"""What happens to one run, decided in one place: skipped (its ``ok`` record exists), ok, or failed.

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
from metabench.engine.records import SCHEMA_VERSION, read_ok_record, write_record
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


def done_outcome(runner: SuiteRunner, spec: RunSpec) -> RunOutcome | None:
    """A ``skipped`` outcome if ``spec``'s ``ok`` record exists and the runner does not ``force``; None
    when the run must run (no record, a failed or corrupt one)."""
    path = runner.record_path(spec)
    if not runner.settings.force and (rec := read_ok_record(path)) is not None:
        return RunOutcome(spec.run_id, "skipped", path, record=rec)
    return None


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
