"""Marks on leaderboard rows whose numbers cannot be taken at face value: records that are stale (their data
or a plugin's code changed since), that carry no provenance to tell, or whose plugins did not run sealed or
had not passed the sealed isolation check (the record's ``isolation``)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MARKS = ("stale", "no-provenance", "unsealed", "unchecked")  # in the order they are shown

MARKS_NOTE = ("Marks: `stale`: the data or a plugin's code has changed since a record of the row was made "
              "(`metabench run` re-runs it); `no-provenance`: a record carries no data and code digests (made "
              "before metabench recorded them), so whether it is stale cannot be told; `unsealed`: a record's "
              "plugins did not run in a sealed worker; `unchecked`: its plugins had not passed `check-plugin`'s "
              "sealed isolation check at their code. A row is marked when any of its records is.")


def record_marks(record: dict[str, Any], stale: bool = False) -> set[str]:
    """The marks of one record; ``stale`` as judged against today's code and data
    (:meth:`metabench.engine.provenance.Fingerprints.staleness`), which the record alone cannot say."""
    isolation = record.get("isolation") if isinstance(record.get("isolation"), dict) else {}
    marks = {"stale"} if stale else set()
    if not isinstance(record.get("provenance"), dict):
        marks.add("no-provenance")
    if isolation.get("sealed") is not True:
        marks.add("unsealed")
    if isolation.get("checked") is not True:
        marks.add("unchecked")
    return marks


def join_marks(marks: Iterable[set[str]]) -> str:
    """The union of several records' marks as one cell: space-separated in :data:`MARKS` order ('' for none)."""
    union = set().union(*marks)
    return " ".join(m for m in MARKS if m in union)
