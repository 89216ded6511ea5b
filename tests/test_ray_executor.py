"""The ray executor on a local Ray instance (one per module): the local executor's metrics, and failed records
for a raising plugin while the other runs succeed. (--run-timeout runs the same supervisor inside a Ray task as
the process executor, whose timeout test is in test_executors.py; a wall-clock limit is not asserted here
because Ray worker start-up on a loaded 2-core machine makes any tight limit flaky.)"""
from __future__ import annotations

import pytest

from metabench.commands.cli import main
from metabench.engine.records import read_record
from tests.helpers import GARBAGE_PLUGIN
from tests.helpers import metrics_by_identity, small_suite

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module; the executor uses a Ray already initialised as it is."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_ray_executor_gives_the_local_metrics_and_isolates_failures(tmp_path, cache_dir, ray_session, capsys):
    common = ["--cache-dir", str(cache_dir), "--data-root", str(tmp_path / "no-data")]
    suite = small_suite(tmp_path / "s.toml", "small")
    assert main(["run", str(suite), "--results", str(tmp_path / "local"), *common]) == 0
    local = metrics_by_identity(tmp_path / "local" / "small")

    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    (plugdir / "garbage.py").write_text(GARBAGE_PLUGIN)
    suite = small_suite(tmp_path / "s.toml", "small", algorithms=("protonet", "exploding"))
    rc = main(["run", str(suite), "--results", str(tmp_path / "ray"), *common, "--executor", "ray",
               "--plugins-dir", str(plugdir)])
    assert rc == 1
    got = metrics_by_identity(tmp_path / "ray" / "small")
    assert {k: v for k, v in got.items() if k[2] == "protonet"} == local and len(local) == 2
    failed = {(r["config"]["task_generator"], r["config"]["algorithm"]): r
              for r in map(read_record, (tmp_path / "ray" / "small").glob("*.json")) if r["status"] == "failed"}
    assert len(failed) == 2
    for gen in ("oracle", "umtra"):
        assert "boom at step 3" in failed[gen, "exploding"]["error"]
        assert failed[gen, "exploding"]["failed_plugin"] == "algorithm:exploding"
    assert "2 ran, 0 skipped (already done), 2 failed" in capsys.readouterr().err
    assert not list((tmp_path / "ray" / "small").glob(".*"))  # no lock or temporary file left
