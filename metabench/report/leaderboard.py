"""Writes every leaderboard file from the records; pure functions of the records (and of which of them are
stale): the same records always give the same bytes."""
from __future__ import annotations

from pathlib import Path
from collections.abc import Collection
from typing import Any

from metabench.engine.records import views
from metabench.report.html import plotly_script, render_html
from metabench.report.markdown import render_markdown
from metabench.report.reproduction import render_reproduction, resolve_claims
from metabench.report.summary import plugin_defaults, summarize


def write_leaderboard(records: list[dict[str, Any]], out_dir: Path, registry: Any = None,
                      stale: Collection[str] = ()) -> list[Path]:
    """Write ``README.md``, ``leaderboard.csv``, ``index.html`` (the same tables with plots; plotly.js from
    the vendored ``plotly-<version>.min.js`` beside it, written only when absent or different) and
    ``REPRODUCTION.md`` (the plugins' published numbers beside ours; ``registry`` gives the plugins, None
    discovers the installed ones; their option defaults fill options that old records lack, see
    :func:`~metabench.report.summary.summarize`) into ``out_dir``; returns the paths written. ``stale``: the run ids of
    records judged stale against today's code and data, marked so (:mod:`metabench.report.marks`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = views(sorted(records, key=lambda r: r["run_id"]))
    if registry is None or isinstance(registry, list):
        from metabench.engine.registry import discover

        plugins = discover()
    else:
        plugins = registry
    df = summarize(records, stale, plugin_defaults(plugins))
    failed = [r for r in records if r["status"] == "failed"]
    md_path, csv_path = out_dir / "README.md", out_dir / "leaderboard.csv"
    md_path.write_text(render_markdown(df, failed, len(records)), encoding="utf-8")
    df.to_csv(csv_path, index=False, float_format="%.6f", lineterminator="\n")
    html_path = out_dir / "index.html"
    html_path.write_text(render_html(df, failed, len(records)), encoding="utf-8")
    script_name, script, _ = plotly_script()  # written once per plotly version: regenerations leave it alone
    script_path = out_dir / script_name
    if not script_path.is_file() or script_path.read_text(encoding="utf-8") != script:
        script_path.write_text(script, encoding="utf-8")
    repro_path = out_dir / "REPRODUCTION.md"
    repro_path.write_text(render_reproduction(df, resolve_claims(registry), len(records)), encoding="utf-8")
    return [md_path, csv_path, html_path, script_path, repro_path]
