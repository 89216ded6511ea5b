"""Published numbers a plugin should reproduce, and the reproduction report built from them.

A plugin declares its paper's numbers as data beside its code, in a class attribute::

    class ProtoNet(Algorithm):
        claims = Claim.grid("Snell et al. 2017, Prototypical Networks", "Table 1", "omniglot",
                            {(5, 1): 98.8, (5, 5): 99.7, (20, 1): (96.0, 0.2)})

A claim is matched to records by dataset, ways, shots, task generator and algorithm. Left unset, the
algorithm is the declaring algorithm plugin (a task generator's claim without one matches any algorithm)
and the task generator is the declaring generator plugin, else ``oracle`` (supervised tasks). Names match
the base plugin of a variant: a ``cactus@pca`` run matches a ``cactus`` claim. Claims are not inherited:
FOMAML subclasses MAML but declares its own.

:func:`write_reproduction` writes ``REPRODUCTION.md``: for every claim with matching records, the paper's
number beside ours, the gap and whether it lies within the combined confidence interval; claims without
records are listed as not yet run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from metabench.registry import Registry


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
                and _name_matches(self.task_generator, task_generator)
                and _name_matches(self.algorithm, algorithm))


def _name_matches(claimed: str | None, actual: str) -> bool:
    """``None`` matches anything; ``cactus`` matches ``cactus`` and its variants; ``cactus@x`` only itself."""
    if claimed is None:
        return True
    return actual == claimed or ("@" not in claimed and actual.split("@", 1)[0] == claimed)


@dataclass(frozen=True)
class SourcedClaim:
    """A claim with its defaults resolved and the plugin (``kind:name``) that declared it."""

    source: str
    claim: Claim


def plugin_claims(kind: str, name: str, cls: type) -> list[SourcedClaim]:
    """The claims ``cls`` itself declares (not inherited ones), with algorithm / task generator resolved."""
    raw = vars(cls).get("claims", ())
    out = []
    for c in raw:
        if not isinstance(c, Claim):
            raise TypeError(f"{kind}:{name}: `claims` must hold Claim objects, got {c!r}")
        alg = c.algorithm or (name if kind == "algorithm" else None)
        gen = c.task_generator or (name if kind == "task_generator" else "oracle")
        out.append(SourcedClaim(f"{kind}:{name}", replace(c, algorithm=alg, task_generator=gen)))
    return out


def gather_claims(registry: Registry) -> list[SourcedClaim]:
    """Every claim of every plugin in ``registry``, in a stable order (dataset, protocol, plugin, paper)."""
    claims = [sc for p in registry.all() for sc in plugin_claims(p.kind, p.name, p.cls)]
    return sorted(claims, key=_claim_order)


def _claim_order(sc: SourcedClaim) -> tuple:
    c = sc.claim
    return (c.dataset, c.ways, c.shots, sc.source, c.algorithm or "", c.task_generator or "", c.paper, c.table)


def _fmt(value: float, ci: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def reproduction_rows(df: pd.DataFrame, claims: list[SourcedClaim]) -> tuple[list[dict], list[SourcedClaim]]:
    """Pair claims with the leaderboard's summary rows (:func:`metabench.leaderboard.summarize`).

    Returns one dict per (claim, matching summary row) and the claims with no matching row. ``within``
    says whether |ours − paper| ≤ √(ci_paper² + ci_ours²), a paper without a CI contributing 0."""
    rows, missing = [], []
    for sc in claims:
        c = sc.claim
        hits = [r for _, r in df.iterrows()
                if c.matches(r.dataset, int(r.ways), int(r.shots), r.task_generator, r.algorithm)] if len(df) else []
        if not hits:
            missing.append(sc)
        for r in hits:
            ours, ours_ci = 100 * float(r.accuracy_mean), 100 * float(r.accuracy_ci95)
            gap = ours - c.value
            bound = math.sqrt((c.ci or 0.0) ** 2 + ours_ci ** 2)
            rows.append({"source": sc.source, "claim": c, "algorithm": r.algorithm,
                         "task_generator": r.task_generator, "queries": int(r.queries), "suite": r.suite,
                         "config_hash": r.config_hash, "seeds": int(r.seeds), "steps": int(r.steps),
                         "meta_batch": int(r.meta_batch), "ours": ours, "ours_ci": ours_ci, "gap": gap,
                         "bound": bound, "within": abs(gap) <= bound})
    return rows, missing


def render_reproduction(df: pd.DataFrame, claims: list[SourcedClaim], n_records: int) -> str:
    """``REPRODUCTION.md``: every claim beside our matching results, then the claims not yet run."""
    from tabulate import tabulate

    rows, missing = reproduction_rows(df, claims)
    matched = len(claims) - len(missing)
    out = ["# metabench reproduction report", "",
           f"Generated by `metabench leaderboard` from {n_records} result record(s) and the published numbers "
           "the plugins declare (`claims`); do not edit by hand.",
           "Paper: the published accuracy (%) ± its published confidence interval where it gives one. Ours: the "
           "leaderboard's accuracy (%) ± 95% CI (over test episodes for one seed, Student-t over seeds). Gap: "
           "ours − paper in points. Within CI: |gap| ≤ √(CI paper² + CI ours²), the two intervals combined (a "
           "paper without an interval contributes 0). Protocols can differ from the paper's (queries, budget, "
           "backbone, embedding): see each claim's note and the suite.", "",
           f"{matched} of {len(claims)} claim(s) have matching records; "
           f"{sum(r['within'] for r in rows)} of {len(rows)} comparison(s) are within the combined CI.", ""]
    sections: dict[tuple, list[dict]] = {}
    for r in rows:
        c = r["claim"]
        sections.setdefault((c.dataset, c.ways, c.shots), []).append(r)
    for (ds, w, k), rs in sorted(sections.items()):
        out += [f"## {ds} — {w}-way {k}-shot", ""]
        table = [[r["source"], f"{r['claim'].paper}, {r['claim'].table}", r["algorithm"], r["task_generator"],
                  _fmt(r["claim"].value, r["claim"].ci), _fmt(r["ours"], r["ours_ci"]), f"{r['gap']:+.2f}",
                  ("yes" if r["within"] else "no") + f" (±{r['bound']:.2f})", r["queries"], r["seeds"],
                  f"{r['steps']} × {r['meta_batch']}", f"{r['suite']} ({r['config_hash']})",
                  r["claim"].note or "–"] for r in rs]
        out.append(tabulate(table, headers=["Plugin", "Paper", "Algorithm", "Task generator", "Paper (%)",
                                            "Ours (%)", "Gap (pts)", "Within CI", "Queries", "Seeds",
                                            "Steps × tasks", "Suite (config)", "Note"],
                            tablefmt="github", disable_numparse=True))
        out.append("")
    if missing:
        out += ["## Not yet run", "", "Claims with no matching record:", ""]
        table = [[sc.source, f"{sc.claim.paper}, {sc.claim.table}", sc.claim.dataset,
                  f"{sc.claim.ways}-way {sc.claim.shots}-shot", sc.claim.algorithm or "any",
                  sc.claim.task_generator, _fmt(sc.claim.value, sc.claim.ci), sc.claim.note or "–"]
                 for sc in missing]
        out.append(tabulate(table, headers=["Plugin", "Paper", "Dataset", "Protocol", "Algorithm",
                                            "Task generator", "Paper (%)", "Note"],
                            tablefmt="github", disable_numparse=True))
        out.append("")
    return "\n".join(out)


def resolve_claims(registry: Registry | list[SourcedClaim] | None) -> list[SourcedClaim]:
    """Claims from a :class:`Registry`, a ready list of :class:`SourcedClaim`, or None (the installed
    plugins, discovered)."""
    if registry is None:
        from metabench.registry import discover

        registry = discover()
    return sorted(registry, key=_claim_order) if isinstance(registry, list) else gather_claims(registry)


def write_reproduction(records: list[dict[str, Any]], registry: Registry | list[SourcedClaim] | None,
                       path: Path) -> Path:
    """Write ``REPRODUCTION.md`` for ``records`` and the claims of ``registry`` (see :func:`resolve_claims`);
    returns ``path``."""
    from metabench.leaderboard import summarize

    records = sorted(records, key=lambda r: r["run_id"])
    path = Path(path)
    path.write_text(render_reproduction(summarize(records), resolve_claims(registry), len(records)),
                    encoding="utf-8")
    return path
