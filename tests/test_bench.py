"""metabench bench: rows of the documented shape from real (tiny) timings."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metabench.execution.bench import count_flops, resolve_algorithms, run_bench, synthetic_batch, time_generators
from metabench.execution.gpu_check import gpu_check
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
    rows = run_bench(["anil"], "cpu", ways=3, shots=1, queries=2, meta_batch=2, repeats=1, warmup=1,
                     image_shape=(1, 8, 8), options={"anil": {"hidden": 8, "meta_grad_chunk": 1}}, rounds=2)
    assert {r["path"] for r in rows} == {"loop", "batched", "grouped", "auto"}
    by_path = {r["path"]: r for r in rows}
    assert by_path["loop"]["speedup_vs_reference"] == 1.0 and by_path["loop"]["train_queries"] == 1
    # ANIL meta-trains first order: channels-last on the grouped path auto picks for 6-image tasks, not the loop
    assert (by_path["loop"]["train_channels_last"], by_path["loop"]["predict_channels_last"]) == (False, False)
    assert (by_path["auto"]["train_channels_last"], by_path["auto"]["predict_channels_last"]) == (True, True)
    for r in rows:  # the loop's counted arithmetic over each path's own time
        assert r["train_peak_mem_mb"] > 0 and r["adapt_peak_mem_mb"] > 0 and r["matmul_gflop_per_s"] > 0
        assert 0 <= r["train_mem_over_start_mb"] <= r["train_peak_mem_mb"] and r["cuda_graph"] is False
        assert r["variant"] == "default"
        assert r["train_gflop_per_s"] == pytest.approx(
            by_path["loop"]["train_gflop_per_s"] * r["speedup_vs_reference"], rel=1e-9)
        assert r["matmul_fraction"] == pytest.approx(r["train_gflop_per_s"] / r["matmul_gflop_per_s"])


def test_flops_are_counted_on_the_loop_path():
    batch = synthetic_batch(2, 3, 1, 1, (1, 8, 8), torch.device("cpu"))
    for name in ("maml", "reptile"):
        (cls,) = resolve_algorithms([name])
        opts = {"hidden": 4, "test_inner_steps": 2}
        flops = {p: count_flops(cls, torch.device("cpu"), batch, batch, 1, {**opts, "path": p})
                 for p in ("loop", "grouped")}
        assert flops["loop"] == flops["grouped"] and min(flops["loop"]) > 0
        if "task_threads" in cls.defaults:  # counted on the caller's thread: threads' operations escape the counter
            assert count_flops(cls, torch.device("cpu"), batch, batch, 1, {**opts, "task_threads": 2}) == flops["loop"]


def test_the_reference_loop_runs_on_the_callers_thread_and_the_other_rows_as_asked():
    rows = run_bench(["maml"], "cpu", ways=3, shots=1, queries=1, meta_batch=4, repeats=1, warmup=1,
                     image_shape=(1, 8, 8), options={"maml": {"hidden": 4, "task_threads": 2}}, paths=("grouped",))
    assert {r["path"]: r["task_threads"] for r in rows} == {"loop": 1, "grouped": 2, "auto": 2}
    assert {r["path"]: r["train_path"] for r in rows} == {"loop": "loop", "grouped": "grouped", "auto": "grouped"}


def test_gpu_check_runs_on_cpu_and_writes_its_json(tmp_path, capsys):
    report = gpu_check("cpu", ["maml", "reptile"], meta_batch=2, out_dir=tmp_path, ways=3, queries=1,
                       repeats=1, warmup=1, image_shape=(1, 8, 8),
                       options={"maml": {"hidden": 4}, "reptile": {"hidden": 4, "test_inner_steps": 2}})
    assert report["device"] == "cpu" and report["device_name"]
    assert report["variants_skipped"] == {"cuda-graph": "CUDA only"}
    assert {(r["algorithm"], r["variant"], r["path"]) for r in report["rows"]} == {
        (a, v, p) for a in ("maml", "reptile") for v in ("default", "bfloat16-autocast")
        for p in ("loop", "grouped", "auto")}
    assert set(report["summary"]["maml"]) == {"default", "bfloat16-autocast"}
    assert json.loads(Path(report["file"]).read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    assert main(["bench", "--preset", "gpu", "--algorithms", "anil", "--option", "hidden=2", "--ways", "2",
                 "--queries", "1", "--meta-batch", "2", "--repeats", "1", "--warmup", "1",
                 "--out", str(tmp_path / "cli"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Path(out["file"]).parent == tmp_path / "cli" and {r["algorithm"] for r in out["rows"]} == {"anil"}


def test_bench_option_reaches_the_algorithms_that_have_it(capsys):
    tiny = ["--ways", "3", "--queries", "2", "--meta-batch", "2", "--repeats", "1", "--warmup", "1", "--json",
            "--paths", "loop"]
    assert main(["bench", "--algorithms", "fomaml,protonet", "--option", "first_order=false", *tiny]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["algorithm"]: r["options"] for r in rows} == {"fomaml": {"first_order": False}, "protonet": {}}
    assert main(["bench", "--algorithms", "protonet", "--option", "no_such_option=1", *tiny]) == 2
    assert "no_such_option" in capsys.readouterr().err


@pytest.mark.skipif(not __import__("metabench.engine.sandbox", fromlist=["x"]).available()[0],
                    reason="bubblewrap cannot run here")
def test_outside_algorithms_are_timed_in_a_sandbox(tmp_path, capsys, monkeypatch):
    """A --plugins-dir algorithm is imported and timed only in a sandboxed child: an honest one gives its
    rows (and the preset's file lands under --out here); a vandal that deletes records loses nothing."""
    import shutil

    plug = tmp_path / "plugins"
    plug.mkdir()
    shutil.copy(Path(__file__).with_name("cheats.py"), plug / "cheats.py")
    (plug / "outside.py").write_text(
        "from metabench import hookimpl\nfrom metabench_plugins.algorithms.maml import MAML\n\n\n"
        "class Outside(MAML):\n    name = 'outside_maml'\n\n\n"
        "@hookimpl\ndef metabench_algorithms():\n    return [Outside]\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "record.json").write_text("{}\n")
    monkeypatch.setenv("CHEAT_RESULTS", str(results))
    tiny = ["--ways", "2", "--queries", "1", "--meta-batch", "2", "--repeats", "1", "--warmup", "0", "--json",
            "--option", "hidden=2", "--plugins-dir", str(plug)]
    assert main(["bench", "--algorithms", "outside_maml", "--paths", "loop", *tiny]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["algorithm"], r["path"]) for r in rows} == {("outside_maml", "loop"), ("outside_maml", "auto")}
    assert main(["bench", "--algorithms", "outside_maml", "--preset", "gpu", "--out", str(tmp_path / "gpu"),
                 "--paths", "loop", *tiny]) == 0
    report = json.loads(capsys.readouterr().out)
    assert Path(report["file"]).parent == tmp_path / "gpu" and Path(report["file"]).is_file()
    assert main(["bench", "--algorithms", "vandal_eraser", *tiny]) != 0
    assert "sandboxed bench failed" in capsys.readouterr().err
    assert (results / "record.json").read_text() == "{}\n"
