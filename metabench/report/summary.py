"""The leaderboard's content as data: records aggregated over seeds into summary rows, and the per-dataset,
per-protocol tables (display strings) that the Markdown and HTML renderings share."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from collections.abc import Collection
from typing import Any

import pandas as pd
from scipy import stats

from metabench.engine.records import views
from metabench.names import base_name
from metabench.report.marks import join_marks, record_marks

CLUSTER_METRICS = ("nmi", "ari", "cluster_acc", "own_nmi", "own_ari", "own_cluster_acc")
COLUMNS = ["dataset", "ways", "shots", "queries", "suite", "algorithm", "task_generator", "accuracy_mean",
           "accuracy_ci95", "nmi", "nmi_ci95", "ari", "ari_ci95", "cluster_acc", "cluster_acc_ci95", "own_nmi",
           "own_nmi_ci95", "own_ari", "own_ari_ci95", "own_cluster_acc", "own_cluster_acc_ci95", "seeds",
           "test_episodes", "steps", "meta_batch", "meta_train_tasks_per_s", "eval_tasks_per_s", "config_hash",
           "marks"]


def plugin_defaults(registry: Any) -> dict[str, dict[str, Any]]:
    """Each plugin's option defaults by name (a name two kinds share is left out), from a registry."""
    seen: dict[str, list[dict[str, Any]]] = {}
    for info in registry.all():
        seen.setdefault(info.name, []).append(dict(getattr(info.cls, "defaults", {}) or {}))
    return {name: d[0] for name, d in seen.items() if len(d) == 1}


def _config_hash(config: dict[str, Any], defaults: dict[str, dict[str, Any]] | None = None) -> str:
    """Hash of a run's config without its seed: runs that differ only by seed share it. With ``defaults``
    (:func:`plugin_defaults`), an option a plugin gained after a record was made counts at its default in that
    record (as a kept model is rebuilt), so seeds run before and after the option appeared share a row."""
    rest = {k: v for k, v in config.items() if k != "seed"}
    if defaults:
        rest["options"] = {entry: ({**defaults.get(base_name(entry), {}), **opts} if isinstance(opts, dict)
                                   else opts) for entry, opts in (rest.get("options") or {}).items()}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]


def _ci_over_seeds(means: list[float], cis: list[float]) -> float:
    """One seed: its CI over test episodes. Several: Student-t 95% CI of the mean over seeds."""
    n = len(means)
    if n == 1:
        return cis[0]
    s = pd.Series(means).std(ddof=1)
    return float(stats.t.ppf(0.975, n - 1) * s / math.sqrt(n))


def summarize(records: list[dict[str, Any]], stale: Collection[str] = (),
              defaults: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per (dataset, protocol, suite, algorithm, task generator, config), aggregated over seeds (a
    cross-domain run's dataset reads ``train -> test``, its own tables);
    ``marks`` (:mod:`metabench.report.marks`) from the records and ``stale``, the run ids judged stale;
    ``defaults``: the plugins' option defaults, filled into records made before an option existed."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in views(records):
        if r["status"] != "ok":
            continue
        c = r["config"]
        dataset = f"{c['dataset']} -> {c['test_dataset']}" if c.get("test_dataset") else c["dataset"]
        key = (dataset, c["ways"], c["shots"], c["queries"], c["suite"], c["algorithm"],
               c["task_generator"], _config_hash(c, defaults))
        groups.setdefault(key, []).append(r)
    rows = []
    for key, recs in groups.items():
        recs = sorted(recs, key=lambda r: r["config"]["seed"])
        means = [r["metrics"]["accuracy_mean"] for r in recs]
        cis = [r["metrics"]["accuracy_ci95"] for r in recs]

        def avg(k: str) -> float | None:
            vals = [r["speed"].get(k) for r in recs if r["speed"].get(k) is not None]
            return sum(vals) / len(vals) if vals else None

        clustering = {}
        for m in CLUSTER_METRICS:
            if all(m in r["metrics"] for r in recs):
                vals = [r["metrics"][m] for r in recs]
                clustering[m] = sum(vals) / len(vals)
                clustering[f"{m}_ci95"] = _ci_over_seeds(vals, [r["metrics"][f"{m}_ci95"] for r in recs])
        b = recs[0]["config"]["budget"]
        rows.append(dict(zip(COLUMNS[:7], key[:7]), accuracy_mean=sum(means) / len(means),
                         accuracy_ci95=_ci_over_seeds(means, cis), **clustering, seeds=len(recs),
                         test_episodes=recs[0]["metrics"]["test_episodes"], steps=b["steps"],
                         meta_batch=b["meta_batch"], meta_train_tasks_per_s=avg("meta_train_tasks_per_s"),
                         eval_tasks_per_s=avg("eval_tasks_per_s"), config_hash=key[7],
                         marks=join_marks(record_marks(r, r["run_id"] in stale) for r in recs)))
    df = pd.DataFrame(rows, columns=COLUMNS)
    if df.empty:
        return df
    df = df.sort_values(["dataset", "ways", "shots", "queries", "accuracy_mean", "suite", "algorithm",
                         "task_generator", "config_hash"],
                        ascending=[True, True, True, True, False, True, True, True, True], kind="mergesort")
    return df.reset_index(drop=True)


def _fmt_rate(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


HEADER_NOTE = ("Accuracy is the mean query accuracy over the fixed test episodes (%), ± the 95% confidence "
               "interval: over test episodes for one seed, Student-t over seeds for several. Throughput is "
               "meta-training tasks per second and evaluation tasks per second, averaged over seeds. NMI, ARI "
               "and cluster accuracy (Hungarian-matched) score k-means (k = N) on the algorithm's embedding of "
               "unlabeled test tasks; Own NMI, ARI and cluster accuracy score the algorithm's own clustering of "
               "the same tasks (its `cluster`, a meta-learned clusterer), where it has one.")
PAPER_NOTE = ("Each dataset first in the papers' layout, one column per test protocol (a model trained once is "
              "scored on every protocol it was tested on); † marks a cell whose entry has several "
              "configurations there, the best shown, and (stale) a cell made from a stale record. Then one "
              "table per protocol with every configuration, clustering scores, throughput and marks.")
_CLUSTER_HEADERS = {"nmi": "NMI", "ari": "ARI", "cluster_acc": "Cluster acc.", "own_nmi": "Own NMI",
                    "own_ari": "Own ARI", "own_cluster_acc": "Own cluster acc."}


@dataclass(frozen=True)
class ProtocolTable:
    """One dataset/protocol table of the leaderboard, as display strings (shared by Markdown and HTML)."""

    key: tuple            # (dataset, ways, shots, queries)
    title: str
    headers: list[str]
    rows: list[list[Any]]  # display strings, and ints for the seed and episode counts
    labels: list[str]     # the Algorithm cell of each row (with the config hash where needed)
    frame: pd.DataFrame   # the summary rows behind ``rows``, in the same order


def protocol_tables(df: pd.DataFrame) -> list[ProtocolTable]:
    """The leaderboard's tables, one per dataset and protocol, best accuracy first."""
    tables = []
    for (ds, w, k, q), g in df.groupby(["dataset", "ways", "shots", "queries"], sort=True):
        dup = g.duplicated(["suite", "algorithm", "task_generator"], keep=False)
        shown = [m for m in CLUSTER_METRICS if g[m].notna().any()]
        table, labels = [], []
        for (_, r), d in zip(g.iterrows(), dup):
            alg = r.algorithm + (f" ({r.config_hash})" if d else "")
            clus = [f"{r[m]:.3f} ± {r[m + '_ci95']:.3f}" if pd.notna(r[m]) else "–" for m in shown]
            labels.append(alg)
            table.append([alg, r.task_generator, f"{100 * r.accuracy_mean:.2f} ± {100 * r.accuracy_ci95:.2f}",
                          *clus, int(r.seeds), int(r.test_episodes), f"{int(r.steps)} × {int(r.meta_batch)}",
                          _fmt_rate(r.meta_train_tasks_per_s), _fmt_rate(r.eval_tasks_per_s), r.suite,
                          r.marks or "–"])
        headers = ["Algorithm", "Task generator", "Accuracy (%)", *[_CLUSTER_HEADERS[m] for m in shown], "Seeds",
                   "Test episodes", "Steps × tasks", "Train tasks/s", "Eval tasks/s", "Suite", "Marks"]
        tables.append(ProtocolTable((ds, w, k, q), f"{ds} — {w}-way {k}-shot ({q} queries per class)", headers,
                                    table, labels, g))
    return tables


def failed_rows(failed: list[dict[str, Any]]) -> list[list[str]]:
    """The rows of the failed-runs table: run id, plugin, first line of the error."""
    return [[r["run_id"], r.get("failed_plugin") or "–", r["error"].splitlines()[0][:160]]
            for r in sorted(failed, key=lambda r: r["run_id"])]


@dataclass(frozen=True)
class PaperTable:
    """One dataset's table in the papers' layout: rows algorithm x task generator (x suite), columns the test
    protocols (N-way K-shot), cells "mean ± CI" over seeds, as display strings."""

    dataset: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    columns: list[tuple[int, int, int]]  # (ways, shots, queries) of each protocol column


def paper_tables(df: pd.DataFrame) -> list[PaperTable]:
    """Per dataset, the four-column (or however many protocols were run) table of the papers. A cell holds
    the entry's best configuration on that protocol (``df`` is sorted best first), marked † when the entry
    has several there (the per-protocol tables list them all) and with its seed count when it is under
    the table's most. Rows are ordered by mean accuracy over the columns they fill, fullest rows first."""
    out = []
    for ds, g in df.groupby("dataset", sort=True):
        protos = sorted({(int(w), int(k), int(q)) for w, k, q in zip(g.ways, g.shots, g.queries)})
        queries_vary = len({(w, k) for w, k, _ in protos}) < len(protos)
        most = int(g.seeds.max())
        entries: dict[tuple[str, str, str], dict[tuple[int, int, int], list]] = {}
        for r in g.itertuples(index=False):
            cell = entries.setdefault((r.algorithm, r.task_generator, r.suite), {})
            cell.setdefault((int(r.ways), int(r.shots), int(r.queries)), []).append(r)
        rows = []
        for (alg, gen, suite), cells in entries.items():
            shown, accs = [], []
            for p in protos:
                rs = cells.get(p)
                if not rs:
                    shown.append("–")
                    continue
                best = rs[0]
                accs.append(best.accuracy_mean)
                text = f"{100 * best.accuracy_mean:.2f} ± {100 * best.accuracy_ci95:.2f}"
                if int(best.seeds) < most:
                    text += f" ({int(best.seeds)} seed{'s' if int(best.seeds) > 1 else ''})"
                if "stale" in best.marks.split():
                    text += " (stale)"
                shown.append(text + (" †" if len(rs) > 1 else ""))
            rows.append((-len(accs), -sum(accs) / len(accs), alg, gen, suite, shown))
        rows.sort(key=lambda r: r[:5])
        headers = ["Algorithm", "Task generator", "Suite",
                   *[f"{w}-way {k}-shot" + (f" ({q}q)" if queries_vary else "") for w, k, q in protos]]
        seeds = f"{most} seed{'s' if most > 1 else ''}"
        out.append(PaperTable(ds, f"{ds}: accuracy (%) by test protocol, up to {seeds}", headers,
                              [[a, gn, s, *cells] for _, _, a, gn, s, cells in rows], protos))
    return out
