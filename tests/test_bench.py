"""metabench bench: rows of the documented shape from real (tiny) timings."""
from __future__ import annotations

import json

from metabench.execution.bench import run_bench, time_generators
from metabench.commands.cli import main


def test_generator_timing_rows(cache_dir):
    rows = time_generators(["oracle", "umtra", "cactus@small"], "digits", "cpu", ways=5, shots=1, queries=2,
                           meta_batch=8, repeats=3, warmup=1, cache_dir=cache_dir,
                           options={"cactus": {"partitions": 2, "embedding": "pixels"}})
    assert [r["generator"] for r in rows] == ["oracle", "umtra", "cactus@small"]
    assert all(r["ms_per_meta_batch"] > 0 and r["setup_s"] >= 0 and r["meta_batch"] == 8 for r in rows)


def test_bench_json_has_the_documented_keys(capsys):
    assert main(["bench", "--algorithms", "protonet", "--ways", "3", "--queries", "2", "--meta-batch", "2",
                 "--repeats", "1", "--warmup", "1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert {"algorithm", "path", "device", "ways", "shots", "meta_batch", "meta_train_tasks_per_s",
            "adapt_ms_per_task", "peak_mem_mb", "speedup_vs_reference"} <= set(row)
    assert row["meta_train_tasks_per_s"] > 0 and row["speedup_vs_reference"] is None
    rows = run_bench(["anil"], "cpu", ways=3, shots=1, queries=2, meta_batch=2, repeats=1, warmup=1)
    assert {r["path"] for r in rows} == {"loop", "batched", "auto"}
    by_path = {r["path"]: r for r in rows}
    assert by_path["loop"]["speedup_vs_reference"] == 1.0 and by_path["loop"]["train_queries"] == 1


def test_bench_option_reaches_the_algorithms_that_have_it(capsys):
    tiny = ["--ways", "3", "--queries", "2", "--meta-batch", "2", "--repeats", "1", "--warmup", "1", "--json"]
    assert main(["bench", "--algorithms", "fomaml,protonet", "--option", "first_order=false", *tiny]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["algorithm"]: r["options"] for r in rows} == {"fomaml": {"first_order": False}, "protonet": {}}
    assert main(["bench", "--algorithms", "protonet", "--option", "no_such_option=1", *tiny]) == 2
    assert "no_such_option" in capsys.readouterr().err
