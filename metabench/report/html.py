"""``leaderboards/index.html``: the leaderboard as one self-contained page (no network fetches).

Built from the same summary DataFrame as the Markdown leaderboard (:func:`metabench.report.leaderboard.summarize`)
and the same table cells (:func:`metabench.report.leaderboard.protocol_tables`), so both show the same numbers.
Per dataset and protocol: a sortable table (click a header), accuracy with 95% CI error bars per algorithm ×
task generator, accuracy against meta-training throughput with its Pareto frontier, and clustering NMI where
the records have it; then the average rank across datasets and protocols (as Meta-Dataset reports).

Plots are plotly figures. plotly.js (4.8 MB) is not inlined: it is one vendored file beside the page,
``plotly-<version>.min.js`` (:func:`plotly_script`), loaded by a relative ``<script src>``, so the folder works
offline and a regeneration rewrites only the page (the script's bytes change only with the plotly version; its
SHA-256 is in the page's ``plotly-sha256`` meta tag and checked by the tests). The page is deterministic: figure
ids derive from the dataset and protocol, figure JSON is written with sorted keys, and nothing depends on time or
randomness, so the same records (and the same plotly version) give the same bytes.
"""
from __future__ import annotations

import hashlib
import html
import json
import re
from typing import Any

import pandas as pd

from metabench.report.marks import MARKS_NOTE
from metabench.report.summary import HEADER_NOTE, PAPER_NOTE, ProtocolTable, failed_rows, paper_tables, protocol_tables

PLOT_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["sendDataToCloud"]}
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1rem 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
p.note { color: #555; font-size: 0.9rem; }
table.lb { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem; }
table.lb th, table.lb td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; white-space: nowrap; }
table.lb th { background: #f4f6f8; cursor: pointer; user-select: none; }
table.lb th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.lb th[aria-sort="descending"]::after { content: " \\25BC"; }
table.lb tbody tr:nth-child(even) { background: #fafbfc; }
div.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
div.plot { flex: 1 1 520px; min-width: 400px; height: 380px; }
nav ul { columns: 2; font-size: 0.9rem; }
"""

# Sortable tables in a few lines: numeric when every non-empty cell starts with a number, else text.
_SORT_JS = """
function cellKey(td) { return (td.getAttribute('data-sort') || td.textContent).trim(); }
function sortTable(th) {
  const table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
  const asc = th.getAttribute('aria-sort') !== 'ascending';
  table.querySelectorAll('th').forEach(h => h.removeAttribute('aria-sort'));
  th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
  const rows = Array.from(body.rows), num = s => parseFloat(s.replace(/,/g, ''));
  const keys = rows.map(r => cellKey(r.cells[col]));
  const numeric = keys.every(k => k === '\\u2013' || !isNaN(num(k)));
  const order = rows.map((r, i) => i).sort((a, b) => {
    let x = keys[a], y = keys[b], c;
    if (numeric) { x = x === '\\u2013' ? -Infinity : num(x); y = y === '\\u2013' ? -Infinity : num(y); c = x - y; }
    else { c = x.localeCompare(y); }
    return (asc ? c : -c) || a - b;
  });
  order.forEach(i => body.appendChild(rows[i]));
}
document.querySelectorAll('table.lb th').forEach(th => th.addEventListener('click', () => sortTable(th)));
"""


def slug(*parts: Any) -> str:
    """A stable HTML id from ``parts``: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(map(str, parts)).lower()).strip("-")


def _table_html(table_id: str, headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<table class="lb" id="{table_id}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
            "</tbody>\n</table>")


def _layout(title: str, xaxis: dict, yaxis: dict, **extra: Any) -> dict:
    return {"title": {"text": title, "font": {"size": 14}, "x": 0.01, "xanchor": "left", "y": 0.98,
                      "yanchor": "top"}, "xaxis": xaxis, "yaxis": yaxis,
            "margin": {"l": 60, "r": 20, "t": 60, "b": 80}, "legend": {"title": {"text": "task generator"}},
            "plot_bgcolor": "#ffffff", "paper_bgcolor": "#ffffff", **extra}


def _color(generators: list[str], gen: str) -> str:
    return _COLORS[generators.index(gen) % len(_COLORS)]


def _x_labels(t: ProtocolTable) -> list[str]:
    """The Algorithm label of each row, with the suite when the table mixes suites."""
    many = t.frame.suite.nunique() > 1
    return [lab + (f" · {s}" if many else "") for lab, s in zip(t.labels, t.frame.suite)]


def accuracy_figure(t: ProtocolTable, generators: list[str]) -> dict:
    """Bars of accuracy (%) with 95% CI error bars: one trace per task generator, x = algorithm."""
    data, xs = [], _x_labels(t)
    for gen in sorted(t.frame.task_generator.unique()):
        idx = [i for i, g in enumerate(t.frame.task_generator) if g == gen]
        f = t.frame.iloc[idx]
        data.append({"type": "bar", "name": gen, "x": [xs[i] for i in idx],
                     "y": [round(100 * v, 4) for v in f.accuracy_mean],
                     "error_y": {"type": "data", "array": [round(100 * v, 4) for v in f.accuracy_ci95],
                                 "visible": True},
                     "marker": {"color": _color(generators, gen)},
                     "hovertemplate": "%{x}<br>%{y:.2f} ± %{error_y.array:.2f}%<extra>" + html.escape(gen)
                                      + "</extra>"})
    return {"data": data, "layout": _layout("Accuracy (%) ± 95% CI", {"type": "category"},
                                            {"title": {"text": "accuracy (%)"}}, barmode="group")}


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both throughput (x) and accuracy (y), by x."""
    keep = [i for i, (x, y) in enumerate(points)
            if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points)]
    return sorted(keep, key=lambda i: (points[i][0], points[i][1]))


def frontier_figure(t: ProtocolTable, generators: list[str]) -> dict | None:
    """Accuracy against meta-training tasks/s (log x), one trace per task generator, plus the frontier."""
    f = t.frame.reset_index(drop=True)
    ok = [i for i, v in enumerate(f.meta_train_tasks_per_s) if pd.notna(v) and v > 0]
    if not ok:
        return None
    xs, data = _x_labels(t), []
    for gen in sorted({f.task_generator[i] for i in ok}):
        idx = [i for i in ok if f.task_generator[i] == gen]
        data.append({"type": "scatter", "mode": "markers", "name": gen,
                     "x": [round(float(f.meta_train_tasks_per_s[i]), 4) for i in idx],
                     "y": [round(100 * float(f.accuracy_mean[i]), 4) for i in idx],
                     "error_y": {"type": "data", "visible": True,
                                 "array": [round(100 * float(f.accuracy_ci95[i]), 4) for i in idx]},
                     "text": [xs[i] for i in idx], "marker": {"size": 10, "color": _color(generators, gen)},
                     "hovertemplate": "%{text}<br>%{x:.3g} tasks/s, %{y:.2f}%<extra>" + html.escape(gen)
                                      + "</extra>"})
    pts = [(float(f.meta_train_tasks_per_s[i]), 100 * float(f.accuracy_mean[i])) for i in ok]
    front = pareto(pts)
    data.append({"type": "scatter", "mode": "lines", "name": "frontier", "line": {"dash": "dot",
                 "color": "#444", "shape": "hv"}, "x": [round(pts[i][0], 4) for i in front],
                 "y": [round(pts[i][1], 4) for i in front], "hoverinfo": "skip"})
    return {"data": data, "layout": _layout("Speed / quality frontier",
                                            {"type": "log", "title": {"text": "meta-training tasks/s (log)"}},
                                            {"title": {"text": "accuracy (%)"}})}


def nmi_figure(t: ProtocolTable, generators: list[str]) -> dict | None:
    """Bars of clustering NMI ± 95% CI where the records have it; None when none do."""
    f = t.frame.reset_index(drop=True)
    ok = [i for i, v in enumerate(f.nmi) if pd.notna(v)]
    if not ok:
        return None
    xs, data = _x_labels(t), []
    for gen in sorted({f.task_generator[i] for i in ok}):
        idx = [i for i in ok if f.task_generator[i] == gen]
        data.append({"type": "bar", "name": gen, "x": [xs[i] for i in idx],
                     "y": [round(float(f.nmi[i]), 5) for i in idx],
                     "error_y": {"type": "data", "visible": True,
                                 "array": [round(float(f.nmi_ci95[i]), 5) for i in idx]},
                     "marker": {"color": _color(generators, gen)}})
    own = [i for i in ok if pd.notna(f.own_nmi[i])]
    if own:  # algorithms with their own (meta-learned) clustering: beside their k-means bars, hatched
        data.append({"type": "bar", "name": "own clustering", "x": [xs[i] for i in own],
                     "y": [round(float(f.own_nmi[i]), 5) for i in own],
                     "error_y": {"type": "data", "visible": True,
                                 "array": [round(float(f.own_nmi_ci95[i]), 5) for i in own]},
                     "marker": {"color": "#777", "pattern": {"shape": "/"}}})
    return {"data": data, "layout": _layout("Clustering NMI (k-means on the embedding; own clustering where "
                                            "the algorithm has one) ± 95% CI",
                                            {"type": "category"}, {"title": {"text": "NMI"}, "range": [0, 1]},
                                            barmode="group")}


def average_ranks(tables: list[ProtocolTable]) -> pd.DataFrame:
    """Rank algorithm × task generator entries by accuracy within each dataset/protocol (1 = best, ties
    averaged, an entry's best configuration counting), then average each entry's ranks over the
    dataset/protocol tables it appears in. Columns: algorithm, task_generator, average_rank, tables."""
    ranks: dict[tuple[str, str], list[float]] = {}
    for t in tables:
        best = t.frame.groupby(["algorithm", "task_generator"], sort=True).accuracy_mean.max()
        for key, r in best.rank(ascending=False, method="average").items():
            ranks.setdefault(key, []).append(float(r))
    rows = [{"algorithm": a, "task_generator": g, "average_rank": sum(v) / len(v), "tables": len(v)}
            for (a, g), v in ranks.items()]
    df = pd.DataFrame(rows, columns=["algorithm", "task_generator", "average_rank", "tables"])
    return df.sort_values(["average_rank", "tables", "algorithm", "task_generator"],
                          ascending=[True, False, True, True], kind="mergesort").reset_index(drop=True)


def rank_figure(ranks: pd.DataFrame) -> dict:
    """Horizontal bars of the average rank (best at the top)."""
    labels = [f"{a} × {g}" for a, g in zip(ranks.algorithm, ranks.task_generator)]
    data = [{"type": "bar", "orientation": "h", "name": "average rank", "y": labels[::-1],
             "x": [round(v, 4) for v in ranks.average_rank][::-1], "marker": {"color": "#1f77b4"},
             "text": [f"{n} table(s)" for n in ranks.tables][::-1],
             "hovertemplate": "%{y}: %{x:.2f} over %{text}<extra></extra>"}]
    return {"data": data, "layout": _layout("Average rank across datasets and protocols (lower is better)",
                                            {"title": {"text": "average rank"}, "rangemode": "tozero"},
                                            {"type": "category", "automargin": True},
                                            height=max(300, 60 + 28 * len(labels)), showlegend=False)}


def _figure_json(fig: dict) -> str:
    """Compact, key-sorted JSON of a figure, safe inside a <script> element."""
    return json.dumps(fig, sort_keys=True, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")


def plotly_script() -> tuple[str, str, str]:
    """``(file name, contents, sha256 hex)`` of the plotly.js bundle the page loads from beside itself."""
    from plotly import __version__ as plotly_version
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    return f"plotly-{plotly_version}.min.js", js, hashlib.sha256(js.encode("utf-8")).hexdigest()


def render_html(df: pd.DataFrame, failed: list[dict[str, Any]], n_records: int) -> str:
    """The whole page as a string (plotly.js loaded from :func:`plotly_script`'s file beside it); a pure
    function of its arguments."""
    from plotly import __version__ as plotly_version

    script_name, _, script_sha = plotly_script()

    tables = protocol_tables(df)
    generators = sorted(df.task_generator.unique()) if not df.empty else []
    figures: list[tuple[str, dict]] = []
    body = ["<h1>metabench leaderboard</h1>",
            f'<p class="note">Generated by <code>metabench leaderboard</code> from {n_records} result record(s); '
            "do not edit by hand. The same numbers as <code>README.md</code>; click a column header to sort.</p>",
            f'<p class="note">{html.escape(HEADER_NOTE)}</p>', f'<p class="note">{html.escape(MARKS_NOTE)}</p>']
    if tables:
        body.append("<nav><ul>" + "".join(f'<li><a href="#{slug("section", *t.key)}">{html.escape(t.title)}</a>'
                                          "</li>" for t in tables)
                    + '<li><a href="#average-rank">Average rank</a></li></ul></nav>')
    else:
        body.append("<p>No successful runs yet.</p>")
    papers = paper_tables(df)
    if papers:
        body.append(f'<p class="note">{html.escape(PAPER_NOTE)}</p>')
    for p in papers:
        body += [f'<section class="paper" id="{slug("paper", p.dataset)}" data-dataset="{html.escape(p.dataset)}">',
                 f"<h2>{html.escape(p.title)}</h2>", _table_html(f"table-{slug('paper', p.dataset)}", p.headers, p.rows),
                 "</section>"]
    for t in tables:
        sid = slug(*t.key)
        body += [f'<section class="protocol" id="{slug("section", *t.key)}" data-dataset="{html.escape(t.key[0])}">',
                 f"<h2>{html.escape(t.title)}</h2>", _table_html(f"table-{sid}", t.headers, t.rows)]
        plots = [("acc", accuracy_figure(t, generators)), ("speed", frontier_figure(t, generators)),
                 ("nmi", nmi_figure(t, generators))]
        divs = []
        for kind, fig in plots:
            if fig is not None:
                figures.append((f"fig-{kind}-{sid}", fig))
                divs.append(f'<div class="plot" id="fig-{kind}-{sid}"></div>')
        body += ['<div class="plots">', *divs, "</div>", "</section>"]
    if tables:
        ranks = average_ranks(tables)
        figures.append(("fig-rank", rank_figure(ranks)))
        rows = [[a, g, f"{r:.2f}", n] for a, g, r, n in ranks.itertuples(index=False)]
        body += ['<section id="average-rank">', "<h2>Average rank</h2>",
                 '<p class="note">Within each dataset/protocol table, algorithm × task generator entries are ranked '
                 "by accuracy (1 = best, ties averaged, an entry's best configuration counting); the ranks are "
                 "then averaged over the tables each entry appears in, as Meta-Dataset averages ranks over "
                 "datasets. Entries run on fewer tables are ranked on fewer tasks.</p>",
                 _table_html("table-rank", ["Algorithm", "Task generator", "Average rank", "Tables"], rows),
                 f'<div class="plot" id="fig-rank" style="height:{figures[-1][1]["layout"]["height"]}px"></div>',
                 "</section>"]
    if failed:
        body += ['<section id="failed">', "<h2>Failed runs</h2>",
                 _table_html("table-failed", ["Run", "Plugin", "Error"], failed_rows(failed)), "</section>"]
    figs_js = "[\n" + ",\n".join(f'["{fid}",{_figure_json(fig)}]' for fid, fig in figures) + "\n]"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="metabench leaderboard (plotly {plotly_version})">',
        "<title>metabench leaderboard</title>", f"<style>{_CSS}</style>",
        f'<meta name="plotly-sha256" content="{script_sha}">',
        f'<script src="{html.escape(script_name)}"></script>', "</head>", "<body>", *body,
        f"<script>{_SORT_JS}</script>",
        f"<script>\nconst FIGURES = {figs_js};\nconst CONFIG = {json.dumps(PLOT_CONFIG, sort_keys=True)};\n"
        "for (const [id, fig] of FIGURES) { Plotly.newPlot(id, fig.data, fig.layout, CONFIG); }\n</script>",
        "</body>", "</html>", ""])
