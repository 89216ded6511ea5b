"""Published numbers a plugin should reproduce: :class:`Claim`, declared as data beside the plugin's code.

A plugin declares its paper's numbers as data beside its code, in a class attribute::

    class ProtoNet(Algorithm):
        claims = Claim.grid("Snell et al. 2017, Prototypical Networks", "Table 1", "omniglot",
                            {(5, 1): 98.8, (5, 5): 99.7, (20, 1): (96.0, 0.2)})

A claim is matched to records by dataset, ways, shots, task generator and algorithm. Left unset, the
algorithm is the declaring algorithm plugin (a task generator's claim without one matches any algorithm)
and the task generator is the declaring generator plugin, else any supervised one (``uses_labels = True``,
e.g. the oracle). Names match the base plugin of a variant: a ``cactus@pca`` run matches a ``cactus``
claim. Claims are not inherited: FOMAML subclasses MAML but declares its own.
:mod:`metabench.report.reproduction` turns them into ``REPRODUCTION.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metabench.names import base_name


@dataclass(frozen=True)
class Claim:
    """One published accuracy: ``value`` (%) ± ``ci`` (the paper's 95% interval half-width in points, None
    where the paper gives none) on ``dataset`` ``ways``-way ``shots``-shot tasks."""

    paper: str
    table: str
    dataset: str
    ways: int
    shots: int
    value: float
    ci: float | None = None
    task_generator: str | None = None
    algorithm: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        for k in ("paper", "table", "dataset"):
            if not isinstance(getattr(self, k), str) or not getattr(self, k):
                raise ValueError(f"Claim.{k} must be a non-empty string, got {getattr(self, k)!r}")
        if not (isinstance(self.ways, int) and self.ways >= 2 and isinstance(self.shots, int) and self.shots >= 1):
            raise ValueError(f"Claim: ways >= 2 and shots >= 1 must be integers, got {self.ways}, {self.shots}")
        if not 1 < self.value <= 100:  # below 1% reads as a fraction given by mistake
            raise ValueError(f"Claim.value is an accuracy in percent (1-100], got {self.value!r}")
        if self.ci is not None and not self.ci >= 0:
            raise ValueError(f"Claim.ci must be >= 0 or None, got {self.ci!r}")

    @classmethod
    def grid(cls, paper: str, table: str, dataset: str, results: dict[tuple[int, int], Any],
             **common: Any) -> tuple[Claim, ...]:
        """Claims of one table: ``results`` maps ``(ways, shots)`` to ``value`` or ``(value, ci)``;
        ``common`` (task_generator, algorithm, note) applies to every one."""
        out = []
        for (ways, shots), v in results.items():
            value, ci = v if isinstance(v, tuple) else (v, None)
            out.append(cls(paper, table, dataset, ways, shots, value, ci, **common))
        return tuple(out)

    def matches(self, dataset: str, ways: int, shots: int, task_generator: str, algorithm: str) -> bool:
        """Whether a run of this identity measures this (resolved) claim."""
        return (dataset == self.dataset and ways == self.ways and shots == self.shots
                and name_matches(self.task_generator, task_generator)
                and name_matches(self.algorithm, algorithm))


def name_matches(claimed: str | None, actual: str) -> bool:
    """``None`` matches anything; ``cactus`` matches ``cactus`` and its variants; ``cactus@x`` only itself."""
    if claimed is None:
        return True
    return actual == claimed or ("@" not in claimed and base_name(actual) == claimed)

