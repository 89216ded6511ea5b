"""Result records: one versioned JSON file per run, written atomically, validated on read."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from metabench.atomic import write_atomic

SCHEMA_VERSION = 3  # 3: one training, an evaluation per test protocol (optional provenance and isolation, added
#                    without a version change: older version-3 records stay valid); 2 is migrated on read; 1 is refused
_MIGRATED = (2,)

_NUM = {"type": ["number", "null"]}
_OK_METRICS = {"type": "object", "required": ["accuracy_mean", "accuracy_ci95", "test_episodes",
                                             "episode_correct", "episode_queries"],
               "properties": {"accuracy_mean": {"type": "number", "minimum": 0, "maximum": 1},
                              "accuracy_ci95": {"type": "number", "minimum": 0},
                              "test_episodes": {"type": "integer", "minimum": 1},
                              "episode_correct": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                              "episode_queries": {"type": "integer", "minimum": 1},
                              "nmi": {"type": "number", "minimum": 0, "maximum": 1},
                              "ari": {"type": "number", "minimum": -1, "maximum": 1},
                              "cluster_acc": {"type": "number", "minimum": 0, "maximum": 1},
                              "cluster_tasks": {"type": "integer", "minimum": 1},
                              "own_nmi": {"type": "number", "minimum": 0, "maximum": 1},
                              "own_ari": {"type": "number", "minimum": -1, "maximum": 1},
                              "own_cluster_acc": {"type": "number", "minimum": 0, "maximum": 1}},
               "dependentRequired": {"nmi": ["nmi_ci95", "ari", "ari_ci95", "cluster_acc",
                                             "cluster_acc_ci95", "cluster_tasks"],
                                     "own_nmi": ["own_nmi_ci95", "own_ari", "own_ari_ci95", "own_cluster_acc",
                                                 "own_cluster_acc_ci95", "nmi"]}}

_EVALUATION = {"type": "object", "required": ["ways", "shots", "queries", "metrics", "speed"],
               "properties": {"ways": {"type": "integer", "minimum": 2}, "shots": {"type": "integer", "minimum": 1},
                              "queries": {"type": "integer", "minimum": 1}, "metrics": _OK_METRICS,
                              "speed": {"type": "object", "required": ["eval_s", "eval_tasks_per_s"],
                                        "properties": {"eval_s": _NUM, "eval_tasks_per_s": _NUM}}}}

# what the run read and ran (metabench.engine.provenance); optional: records made before it have none
_DIGEST = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_PROVENANCE = {"type": "object", "required": ["data_digest", "plugins"],
               "properties": {"data_digest": _DIGEST, "test_data_digest": _DIGEST,
                              "plugins": {"type": "object", "additionalProperties": {
                                  "type": "object", "required": ["name", "code_digest"],
                                  "properties": {"name": {"type": "string"}, "version": {"type": ["string", "null"]},
                                                 "code_digest": _DIGEST}}}}}

RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "metabench result record",
    "type": "object",
    "required": ["schema_version", "run_id", "status", "config", "evaluations", "speed", "environment"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "run_id": {"type": "string", "minLength": 1},
        "status": {"enum": ["ok", "failed"]},
        "error": {"type": "string"},
        "failed_plugin": {"type": ["string", "null"]},
        "config": {
            "type": "object",
            "required": ["suite", "dataset", "task_generator", "algorithm", "ways", "shots", "queries",
                         "train_ways", "train_shots", "train_queries", "seed", "budget", "options"],
            "properties": {
                "suite": {"type": "string"}, "dataset": {"type": "string"},
                "task_generator": {"type": "string"}, "algorithm": {"type": "string"},
                "ways": {"type": "integer"}, "shots": {"type": "integer"}, "queries": {"type": "integer"},
                "seed": {"type": "integer"},
                "budget": {"type": "object", "required": ["steps", "meta_batch", "test_episodes"]},
                "options": {"type": "object"},
            },
        },
        "evaluations": {"type": "array", "items": _EVALUATION},
        "final_train_loss": _NUM,
        "model": {"type": "object", "required": ["file", "sha256", "code"]},
        "speed": {"type": "object",
                  "required": ["meta_train_tasks_per_s", "eval_tasks_per_s", "wall_s", "peak_mem_mb"],
                  "properties": {k: _NUM for k in ("meta_train_tasks_per_s", "eval_tasks_per_s",
                                                   "wall_s", "peak_mem_mb")}},
        "environment": {"type": "object", "required": ["metabench", "python", "torch", "device"]},
        "provenance": _PROVENANCE,
        "isolation": {"type": "object", "properties": {"sealed": {"type": "boolean"},
                                                       "checked": {"type": "boolean"},
                                                       "code_digest": {"type": ["string", "null"]}}},
    },
    "if": {"properties": {"status": {"const": "ok"}}},
    "then": {"properties": {"evaluations": {"minItems": 1}}},
    "else": {"required": ["error"]},
}

_VALIDATOR = jsonschema.Draft202012Validator(RECORD_SCHEMA)


class RecordError(ValueError):
    """A record file that cannot be used; the message names the file and the reason."""


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Validate ``record`` and write it to ``path`` atomically (temporary file in the same folder, fsync,
    rename): a reader sees the old file or the whole new one, never a part. Only the current schema
    version is written."""
    if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
        raise RecordError(f"{path}: only schema version {SCHEMA_VERSION} records are written, got "
                          f"{record.get('schema_version') if isinstance(record, dict) else type(record).__name__!r}")
    validate(record, str(path))
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_atomic(path, lambda f: f.write(text.encode("utf-8")), mode=0o644)


def migrate(record: Any) -> Any:
    """A version-2 record (one test protocol, ``metrics`` at the top) as version 3: one evaluation, the
    protocol from its config; anything else unchanged. Committed v2 results stay readable without a re-run."""
    if not isinstance(record, dict) or record.get("schema_version") != 2 or not isinstance(record.get("config"), dict):
        return record
    out = {k: v for k, v in record.items() if k != "metrics"}
    out["schema_version"] = SCHEMA_VERSION
    metrics = dict(record.get("metrics") or {})
    out["final_train_loss"] = metrics.pop("final_train_loss", None)
    speed = record.get("speed") or {}
    c = record["config"]
    out["evaluations"] = [] if record.get("status") != "ok" else [
        {"ways": c.get("ways"), "shots": c.get("shots"), "queries": c.get("queries"), "metrics": metrics,
         "speed": {"eval_s": speed.get("eval_s"), "eval_tasks_per_s": speed.get("eval_tasks_per_s")}}]
    return out


def evaluation_views(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per evaluation, in the one-protocol shape the reports read: ``config`` with that
    evaluation's ways/shots/queries (and no ``tests``), its ``metrics`` (plus ``final_train_loss``), the
    run's ``speed`` with the evaluation's own ``eval_*`` and ``evaluation`` (its index). A failed record
    is one view with empty metrics; a view (no ``evaluations``) is returned as it is."""
    if "evaluations" not in record:
        return [record]
    if not record["evaluations"]:
        return [{**record, "metrics": {}, "evaluation": 0}]
    views = []
    for i, e in enumerate(record["evaluations"]):
        config = {k: v for k, v in record["config"].items() if k != "tests"}
        config.update(ways=e["ways"], shots=e["shots"], queries=e["queries"])
        views.append({**{k: v for k, v in record.items() if k != "evaluations"}, "config": config,
                      "metrics": {**e["metrics"], "final_train_loss": record.get("final_train_loss")},
                      "speed": {**record["speed"], **e["speed"]}, "evaluation": i})
    return views


def views(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`evaluation_views` of every record, in order."""
    return [v for r in records for v in evaluation_views(r)]


def validate(record: Any, where: str) -> dict[str, Any]:
    """Return ``record`` (a version-2 one migrated, :func:`migrate`) if it matches the schema, else raise
    :class:`RecordError` naming ``where``."""
    record = migrate(record)
    if isinstance(record, dict) and record.get("schema_version") not in (SCHEMA_VERSION, None):
        raise RecordError(f"{where}: schema_version {record.get('schema_version')!r} is not supported "
                          f"(this metabench reads versions {SCHEMA_VERSION} and {', '.join(map(str, _MIGRATED))}); "
                          "re-run the suite to refresh it")
    errors = sorted(_VALIDATOR.iter_errors(record), key=lambda e: (-len(e.absolute_path), e.message))
    if errors:
        msgs = [f"at {'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors[:3]]
        raise RecordError(f"{where}: invalid record " + "; ".join(msgs))
    return record


def read_record(path: Path) -> dict[str, Any]:
    """Load and validate one record file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: not valid JSON ({exc}); the file is corrupt or truncated") from None
    return validate(data, str(path))


def read_ok_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path`` if it exists, is valid and says ``ok``; else ``None`` (a missing, corrupt,
    foreign or failed record is one to (re)run)."""
    try:
        record = read_record(path)
    except (OSError, RecordError):
        return None
    return record if record["status"] == "ok" else None


def load_records(root: Path) -> tuple[list[dict[str, Any]], list[RecordError]]:
    """Every valid record under ``root`` (recursively, sorted by path) and the errors of the others."""
    records, errors = [], []
    for path in sorted(Path(root).rglob("*.json")):
        try:
            records.append(read_record(path))
        except RecordError as exc:
            errors.append(exc)
    return records, errors
