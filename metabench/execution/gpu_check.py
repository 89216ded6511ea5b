"""The one-command device check (``metabench bench --preset gpu``, ``benchmarks/gpu_check.sh``): the gradient
learners' ``auto`` path against the per-task loop (and ``grouped``) at meta-batch 32, tasks/s, GFLOP/s and
peak memory per algorithm, plus bf16 autocast and, on CUDA, a CUDA-graph capture of a whole meta-training
step, written as one JSON file named after the device. It runs on CPU too (reporting the CPU); variants
that fail are recorded with their error instead of stopping the check."""
from __future__ import annotations

import datetime
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metabench.execution.bench import device_name, run_bench

VARIANTS = ("default", "bf16", "cuda-graph")


def _summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per algorithm and variant: ``auto`` (and the fastest path) over ``loop`` in meta-training tasks/s."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("path") == "auto":
            same = [s for s in rows if s["algorithm"] == r["algorithm"] and s["variant"] == r["variant"]
                    and s["path"] not in ("auto", "-")]
            best = max(same, key=lambda s: s["meta_train_tasks_per_s"])
            out.setdefault(r["algorithm"], {})[r["variant"]] = {
                "auto_resolves_to": r["resolves_to"], "auto_vs_loop": r["speedup_vs_reference"],
                "best_path": best["path"], "best_vs_loop": best["speedup_vs_reference"],
                "auto_train_peak_mem_mb": r["train_peak_mem_mb"]}
    return out


def gpu_check(device: str | torch.device | None = None, algorithms: Sequence[str] | None = None,
              variants: Sequence[str] = VARIANTS, meta_batch: int = 32, out_dir: Path | None = None,
              paths: Sequence[str] = ("loop", "grouped"), **bench: Any) -> dict[str, Any]:
    """Run the check on ``device`` (default: CUDA when torch sees it, else CPU) for ``algorithms`` (default:
    every installed algorithm with execution paths: the gradient learners) and return the report;
    with ``out_dir`` also write it to ``out_dir/gpu-check-<device name>.json`` (its path under ``"file"``).
    ``bench``: further :func:`~metabench.execution.bench.run_bench` arguments (ways, queries, options...)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for variant in variants:
        if variant == "cuda-graph" and device.type != "cuda":
            skipped[variant] = "CUDA only"
            continue
        kw = {"autocast": torch.bfloat16} if variant == "bf16" else {"cuda_graph": variant == "cuda-graph"}
        try:
            rows += run_bench(algorithms, device, meta_batch=meta_batch, paths=paths,
                              **kw, **bench)
        except Exception as exc:  # noqa: BLE001 - a failed variant is a result of the check
            skipped[variant] = f"{type(exc).__name__}: {exc}"
    name = device_name(device)
    report = {"device": str(device), "device_name": name, "torch": torch.__version__,
              "cuda": torch.version.cuda, "when": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "meta_batch": meta_batch, "variants_skipped": skipped, "summary": _summary(rows), "rows": rows}
    if out_dir is not None:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]
        path = Path(out_dir) / f"gpu-check-{slug}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        report["file"] = str(path)
        path.write_text(json.dumps(report, indent=2) + "\n")
    return report
