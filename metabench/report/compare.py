"""``metabench compare BASE NEW``: regression testing of one set of results against another.

Runs are matched by identity: (dataset, ways, shots, queries, task generator, algorithm, seed) from each
record's ``config``, not the run id (whose hash covers options and budgets, the very things a change
touches). Test episodes depend only on (dataset, protocol, seed), so matched runs were scored on identical
episodes and each difference is tested on the paired per-episode accuracies (``metrics.episode_correct``
/ ``episode_queries``):

* the effect is the mean per-episode difference NEW − BASE in accuracy points, with its Student-t 95% CI;
* the p-value is two-sided, from the paired t-test (default) or the Wilcoxon signed-rank test;
* identical per-episode results are a tie with p = 1 and are left out of the multiple-comparison family
  (they carry no evidence either way; Wilcoxon drops zero differences for the same reason);
* with ``correction="holm"`` (default) the p-values of the other pairs are Holm-adjusted, which keeps the
  chance of any false alarm over the whole comparison at ``alpha``; ``"none"`` tests each pair at ``alpha``;
* a pair is an improvement or a regression when its adjusted p < ``alpha``, else a tie.

``match="episodes"`` pairs records by their test episodes alone -- (dataset, ways, shots, queries, seed) --
so two methods (any task generator and algorithm) are compared on the episodes they share: e.g. PsCo
against ProtoCLR, ``metabench compare CLR.json PSCO.json --match episodes``.

A run that is ``ok`` in BASE and ``failed`` in NEW is reported as ``failed``; like a significant regression
it makes the command exit 1. Throughput changes are ratios NEW / BASE of tasks per second.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from metabench.engine.records import RecordError, load_records, read_record, views

IDENTITY = ("dataset", "ways", "shots", "queries", "task_generator", "algorithm", "seed")
EPISODES = ("dataset", "ways", "shots", "queries", "seed")  # what the test episodes depend on
MATCHES = {"run": IDENTITY, "episodes": EPISODES}
MATCH_WORDS = {"run": "identity", "episodes": "test episodes"}  # what a key is called in messages
TESTS = ("ttest", "wilcoxon")
CORRECTIONS = ("holm", "none")


def identity(record: dict[str, Any], match: str = "run") -> tuple:
    """The key used for matching: the :data:`IDENTITY` fields of the record's config (``match="episodes"``:
    the :data:`EPISODES` fields), then its ``test_dataset`` ("" in-domain), so a cross-domain run never
    pairs with an in-domain one."""
    c = record["config"]
    return (*(c[k] for k in MATCHES[match]), c.get("test_dataset", ""))


def load_side(path: str | Path) -> tuple[list[dict[str, Any]], list[RecordError]]:
    """The records of a results folder (recursively) or of a single record file, one per evaluation
    (:func:`~metabench.engine.records.evaluation_views`), and the unreadable ones."""
    path = Path(path)
    if path.is_dir():
        records, errors = load_records(path)
    elif not path.exists():
        raise FileNotFoundError(f"{path}: no such results folder or record file")
    else:
        try:
            records, errors = [read_record(path)], []
        except RecordError as exc:
            return [], [exc]
    return views(records), errors


@dataclass
class PairResult:
    """One matched run: its identity, both accuracies, the paired test and the throughput ratios."""

    identity: dict[str, Any]
    verdict: str                 # improvement | regression | tie | failed | fixed | both failed | incomparable
    base_accuracy: float | None = None
    new_accuracy: float | None = None
    effect: float | None = None  # mean per-episode NEW − BASE, accuracy points
    ci95: tuple[float, float] | None = None
    p: float | None = None
    p_adjusted: float | None = None
    episodes: int = 0
    train_ratio: float | None = None
    eval_ratio: float | None = None
    identical: bool = False      # the same correct count in every episode: a tie by construction
    changed: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class Comparison:
    """The result of :func:`compare`."""

    alpha: float
    test: str
    correction: str
    pairs: list[PairResult]
    only_in_base: list[dict[str, Any]]
    only_in_new: list[dict[str, Any]]
    duplicates: list[str]

    def counts(self) -> dict[str, int]:
        """Number of pairs per verdict."""
        out: dict[str, int] = {}
        for p in self.pairs:
            out[p.verdict] = out.get(p.verdict, 0) + 1
        return dict(sorted(out.items()))

    @property
    def gate_failed(self) -> bool:
        """True when a regression is significant or a run that was ok now fails (exit code 1)."""
        return any(p.verdict in ("regression", "failed") for p in self.pairs)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``--json``)."""
        return {"alpha": self.alpha, "test": self.test, "correction": self.correction,
                "counts": self.counts(), "regression_gate_failed": self.gate_failed,
                "pairs": [asdict(p) for p in self.pairs], "only_in_base": self.only_in_base,
                "only_in_new": self.only_in_new, "duplicates": self.duplicates}


def paired_test(base: np.ndarray, new: np.ndarray, test: str = "ttest") -> tuple[float, tuple[float, float], float]:
    """Mean difference ``new − base`` (the units of the inputs), its Student-t 95% CI, and the two-sided
    p-value of the paired ``test``. All-equal differences: p = 1 when they are zero, p = 0 when they are
    a constant non-zero shift (no variance to test against)."""
    d = np.asarray(new, dtype=float) - np.asarray(base, dtype=float)
    n, mean = len(d), float(d.mean()) if len(d) else 0.0
    if n < 2:
        return mean, (mean, mean), 1.0
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
    ci = (mean - half, mean + half)
    if not np.any(d):
        return mean, ci, 1.0
    if sd == 0.0:
        return mean, ci, 0.0
    if test == "wilcoxon":
        p = float(stats.wilcoxon(d, zero_method="wilcox").pvalue)
    elif test == "ttest":
        p = float(stats.ttest_rel(new, base).pvalue)
    else:
        raise ValueError(f"unknown test {test!r}; choose one of {TESTS}")
    return mean, ci, p


def holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _ratio(new: Any, base: Any) -> float | None:
    return float(new) / float(base) if new is not None and base not in (None, 0) else None


def _changed(base: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted config keys whose values differ (the suite name aside)."""
    out = []
    for k in sorted(set(base) | set(new)):
        if not prefix and k == "suite":
            continue
        a, b = base.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _index(records: list[dict[str, Any]], side: str, dups: list[str],
           match: str = "run") -> dict[tuple, dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(identity(r, match), []).append(r)
    out = {}
    for key, rs in groups.items():
        if len(rs) > 1:
            dups.append(f"{side}: {len(rs)} records share {MATCH_WORDS[match]} {dict(zip(MATCHES[match], key))} "
                        f"({', '.join(sorted(r['run_id'] for r in rs))}); left out")
        else:
            out[key] = rs[0]
    return out


def _pair(b: dict[str, Any], n: dict[str, Any], test: str) -> PairResult:
    ident = dict(zip(IDENTITY, identity(b)))
    res = PairResult(ident, "tie", changed=_changed(b["config"], n["config"]))
    if b["status"] != "ok" or n["status"] != "ok":
        res.verdict = {("ok", "failed"): "failed", ("failed", "ok"): "fixed"}.get((b["status"], n["status"]),
                                                                                  "both failed")
        res.reason = n.get("error", "") if n["status"] == "failed" else ""
        return res
    bm, nm = b["metrics"], n["metrics"]
    res.base_accuracy, res.new_accuracy = 100 * bm["accuracy_mean"], 100 * nm["accuracy_mean"]
    res.train_ratio = _ratio(n["speed"].get("meta_train_tasks_per_s"), b["speed"].get("meta_train_tasks_per_s"))
    res.eval_ratio = _ratio(n["speed"].get("eval_tasks_per_s"), b["speed"].get("eval_tasks_per_s"))
    bc, nc = bm["episode_correct"], nm["episode_correct"]
    if len(bc) != len(nc) or bm["episode_queries"] != nm["episode_queries"]:
        res.verdict = "incomparable"
        res.reason = (f"different test episodes ({len(bc)} x {bm['episode_queries']} vs "
                      f"{len(nc)} x {nm['episode_queries']} queries)")
        return res
    q = bm["episode_queries"]
    effect, ci, p = paired_test(100 * np.asarray(bc) / q, 100 * np.asarray(nc) / q, test)
    if math.isnan(p):  # a degenerate test (e.g. too few non-zero differences): no evidence
        p = 1.0
    res.effect, res.ci95, res.p, res.p_adjusted, res.episodes = effect, ci, p, p, len(bc)
    res.identical = list(bc) == list(nc)
    return res


def compare(base: list[dict[str, Any]], new: list[dict[str, Any]], alpha: float = 0.05, test: str = "ttest",
            correction: str = "holm", match: str = "run") -> Comparison:
    """Match ``base`` and ``new`` records by identity (``match="episodes"``: by test episodes) and test every
    matched pair (see the module doc)."""
    if match not in MATCHES:
        raise ValueError(f"unknown match {match!r}; choose one of {tuple(MATCHES)}")
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose one of {TESTS}")
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose one of {CORRECTIONS}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    dups: list[str] = []
    bi, ni = _index(views(base), "base", dups, match), _index(views(new), "new", dups, match)
    pairs = [_pair(bi[k], ni[k], test) for k in sorted(set(bi) & set(ni), key=repr)]
    family = [p for p in pairs if p.p is not None and not p.identical]
    if correction == "holm" and family:
        for p, adj in zip(family, holm([p.p for p in family])):
            p.p_adjusted = adj
    for p in pairs:
        if p.p is None:
            continue
        if p.p_adjusted < alpha and p.effect > 0:
            p.verdict = "improvement"
        elif p.p_adjusted < alpha and p.effect < 0:
            p.verdict = "regression"
        else:
            p.verdict = "tie"
    only = lambda idx, other: [dict(zip(MATCHES[match], k)) | {"run_id": idx[k]["run_id"]}  # noqa: E731
                               for k in sorted(set(idx) - set(other), key=repr)]
    return Comparison(alpha, test, correction, pairs, only(bi, ni), only(ni, bi), dups)


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _pval(p: float | None) -> str:
    return "–" if p is None else ("<1e-300" if p == 0 else f"{p:.2g}" if p < 0.001 else f"{p:.3f}")


def render_text(cmp: Comparison) -> str:
    """The human-readable report: one row per matched run, then the unmatched runs and a summary."""
    from tabulate import tabulate

    rows = []
    for p in cmp.pairs:
        i = p.identity
        delta = "–" if p.effect is None else f"{p.effect:+.2f} [{p.ci95[0]:+.2f}, {p.ci95[1]:+.2f}]"
        rows.append([i["dataset"], f"{i['ways']}w{i['shots']}s{i['queries']}q", i["task_generator"],
                     i["algorithm"], i["seed"], _num(p.base_accuracy, ".2f"), _num(p.new_accuracy, ".2f"), delta,
                     _pval(p.p), _pval(p.p_adjusted), p.verdict.upper() if p.verdict in ("regression", "failed")
                     else p.verdict, _num(p.train_ratio, ".2f") + "x" if p.train_ratio else "–",
                     _num(p.eval_ratio, ".2f") + "x" if p.eval_ratio else "–",
                     "; ".join(p.changed)[:120] or p.reason[:120] or "–"])
    adj = "p (Holm)" if cmp.correction == "holm" else "p (unadjusted)"
    out = [f"metabench compare: {len(cmp.pairs)} matched run(s); paired {cmp.test} on per-episode accuracy, "
           f"alpha = {cmp.alpha}, correction: {cmp.correction}", ""]
    if rows:
        out.append(tabulate(rows, headers=["Dataset", "Protocol", "Task generator", "Algorithm", "Seed",
                                           "Base (%)", "New (%)", "Δ pts [95% CI]", "p", adj, "Verdict",
                                           "Train tasks/s", "Eval tasks/s", "Changed"],
                            tablefmt="simple", disable_numparse=True))
        out.append("")
    for title, items in (("Only in BASE", cmp.only_in_base), ("Only in NEW", cmp.only_in_new)):
        if items:
            out.append(f"{title} ({len(items)}): " + ", ".join(i["run_id"] for i in items))
    out += [f"warning: {d}" for d in cmp.duplicates]
    counts = cmp.counts()
    out.append("Summary: " + (", ".join(f"{n} {v}" for v, n in counts.items()) or "nothing matched")
               + (" -> significant regression, exit 1" if cmp.gate_failed else ""))
    return "\n".join(out)


def main(base: str, new: str, alpha: float = 0.05, test: str = "ttest", correction: str = "holm",
         as_json: bool = False, match: str = "run") -> int:
    """The ``metabench compare`` command: 0 no significant regression, 1 a significant regression (or a
    run that now fails), 2 nothing to compare (missing path, no matching runs)."""
    sides = []
    for path in (base, new):
        try:
            recs, errors = load_side(path)
        except FileNotFoundError as exc:
            print(f"metabench: error: {exc}", file=sys.stderr)
            return 2
        for e in errors:
            print(f"metabench: warning: record left out: {e}", file=sys.stderr)
        sides.append(recs)
    try:
        cmp = compare(sides[0], sides[1], alpha, test, correction, match)
    except ValueError as exc:
        print(f"metabench: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(cmp.as_dict(), indent=2, sort_keys=True, allow_nan=False) if as_json else render_text(cmp))
    if not cmp.pairs:
        print(f"metabench: error: no run of {new} matches a run of {base} by "
              f"{MATCH_WORDS[match]} ({', '.join(MATCHES[match])})", file=sys.stderr)
        return 2
    return 1 if cmp.gate_failed else 0
