"""Records are atomic and validated; leaderboards are pure functions of them."""
from __future__ import annotations

import copy
import json

import pytest

from metabench.cli import main
from metabench.leaderboard import summarize
from metabench.records import SCHEMA_VERSION, RecordError, load_records, read_record, write_record


def _record(run_id="r1", alg="protonet", seed=0, acc=0.9, ci=0.01, ways=5, shots=1, rate=10.0):
    return {
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "status": "ok",
        "config": {"suite": "s", "dataset": "omniglot", "task_generator": "oracle", "algorithm": alg,
                   "ways": ways, "shots": shots, "queries": 15, "train_ways": ways, "train_shots": shots,
                   "train_queries": 15, "seed": seed,
                   "budget": {"steps": 10, "meta_batch": 1, "test_episodes": 100}, "options": {}},
        "metrics": {"accuracy_mean": acc, "accuracy_ci95": ci, "test_episodes": 100,
                    "episode_correct": [round(acc * 75)] * 100, "episode_queries": 75},
        "speed": {"meta_train_tasks_per_s": rate, "eval_tasks_per_s": 2 * rate, "wall_s": 1.0,
                  "peak_mem_mb": 100.0},
        "environment": {"metabench": "0", "python": "3", "torch": "2", "device": "cpu"},
    }


def test_write_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "s" / "r1.json"
    write_record(path, _record())
    assert read_record(path) == _record()
    assert [p.name for p in path.parent.iterdir()] == ["r1.json"], "no temporary file left behind"


def test_an_invalid_record_is_never_written(tmp_path):
    bad = _record()
    del bad["metrics"]["accuracy_mean"]
    with pytest.raises(RecordError, match="accuracy_mean"):
        write_record(tmp_path / "r.json", bad)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("mutate, message", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),
    (lambda text: text.replace(f'"schema_version": {SCHEMA_VERSION}', '"schema_version": 99'),
     "schema_version 99 is not supported"),
    (lambda text: text.replace('"status": "ok"', '"status": "great"'), "invalid record at status"),
])
def test_corrupt_truncated_or_foreign_records_name_the_file(tmp_path, mutate, message):
    path = tmp_path / "r1.json"
    write_record(path, _record())
    path.write_text(mutate(path.read_text()))
    with pytest.raises(RecordError, match=message) as exc:
        read_record(path)
    assert str(path) in str(exc.value)


def test_leaderboard_aggregates_seeds_and_orders_by_accuracy():
    recs = [_record("a0", "protonet", 0, 0.90), _record("a1", "protonet", 1, 0.92),
            _record("b0", "maml", 0, 0.95), _record("c0", "protonet", 0, 0.99, ways=20)]
    df = summarize(recs)
    five = df[df.ways == 5]
    assert list(five.algorithm) == ["maml", "protonet"]
    row = five[five.algorithm == "protonet"].iloc[0]
    assert row.seeds == 2 and row.accuracy_mean == pytest.approx(0.91)
    assert row.accuracy_ci95 == pytest.approx(12.706 * 0.01414 / 1.4142, rel=1e-3)  # t(0.975, 1) * s / sqrt 2
    assert five[five.algorithm == "maml"].iloc[0].accuracy_ci95 == pytest.approx(0.01)


def test_leaderboard_is_byte_identical_and_survives_a_corrupt_record(tmp_path, capsys):
    res = tmp_path / "results" / "s"
    for i, acc in enumerate([0.81, 0.83, 0.9]):
        write_record(res / f"r{i}.json", _record(f"r{i}", alg=["protonet", "protonet", "maml"][i], seed=i % 2,
                                                 acc=acc))
    failed = copy.deepcopy(_record("rf", alg="broken"))
    failed.update(status="failed", error="PluginError: broken: bad shape", failed_plugin="algorithm:broken",
                  metrics={})
    write_record(res / "rf.json", failed)
    (res / "zz_corrupt.json").write_text('{"schema_version": 1, "run_id": ')
    outs = []
    for n in range(2):
        out = tmp_path / f"lb{n}"
        assert main(["leaderboard", "--results", str(tmp_path / "results"), "--out", str(out)]) == 0
        outs.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert outs[0] == outs[1] and set(outs[0]) == {"README.md", "leaderboard.csv", "index.html",
                                                      "REPRODUCTION.md"}
    err = capsys.readouterr().err
    assert "zz_corrupt.json" in err and "not valid JSON" in err
    md = outs[0]["README.md"].decode()
    assert "| maml" in md and "90.00 ± 1.00" in md and "| protonet" in md
    assert "## Failed runs" in md and "algorithm:broken" in md
    assert main(["leaderboard", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "lb"),
                 "--strict"]) == 1
    recs, errors = load_records(tmp_path / "results")
    assert len(recs) == 4 and len(errors) == 1
