"""The whole path through the CLI: suite -> plugins -> episodes -> training -> records -> leaderboard."""
from __future__ import annotations


import pytest

from metabench.commands.cli import main
from metabench.engine.records import read_record
from tests.helpers import GARBAGE_PLUGIN, TINY_DIGITS, scores, write_suite

def _records(folder):
    return {p.name: read_record(p) for p in sorted(folder.glob("*.json"))}


def test_run_writes_records_resumes_and_reproduces(tmp_path, env):
    suite = write_suite(tmp_path / "tiny.toml", TINY_DIGITS)
    assert main(["run", str(suite), *env]) == 0
    recs = _records(tmp_path / "results" / "tiny")
    (name, rec), = recs.items()
    assert rec["status"] == "ok" and rec["config"]["options"]["protonet"]["hidden"] == 16
    (e,) = rec["evaluations"]
    m = e["metrics"]
    assert (e["ways"], e["shots"], e["queries"]) == (5, 1, 5)
    assert 0.2 < m["accuracy_mean"] <= 1 and m["test_episodes"] == 40 and m["accuracy_ci95"] > 0
    assert len(m["episode_correct"]) == 40 and m["episode_queries"] == 25
    assert sum(m["episode_correct"]) / (40 * 25) == pytest.approx(m["accuracy_mean"])
    assert m["cluster_tasks"] == 40 and 0 < m["nmi"] <= 1 and 0 < m["cluster_acc"] <= 1 and -1 <= m["ari"] <= 1
    assert rec["speed"]["meta_train_tasks_per_s"] > 0 and rec["environment"]["threads"] >= 1
    before = (tmp_path / "results" / "tiny" / name).stat().st_mtime_ns
    assert main(["run", str(suite), *env]) == 0   # resumes: nothing to do
    assert (tmp_path / "results" / "tiny" / name).stat().st_mtime_ns == before
    assert main(["run", str(suite), *env, "--force", "--only", "digits__oracle__protonet__*"]) == 0
    again = _records(tmp_path / "results" / "tiny")[name]
    assert scores(again) == scores(rec), "same suite + seed on CPU gives identical numbers"
    assert main(["run", str(suite), *env, "--force", "--only", "no-such-run*"]) == 2  # matches nothing


def test_failing_plugins_get_failed_records_and_the_rest_runs(tmp_path, env, capsys):
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    (plugdir / "bad.py").write_text(GARBAGE_PLUGIN)
    suite = write_suite(tmp_path / "mixed.toml", TINY_DIGITS.replace(
        'name = "tiny"', 'name = "mixed"').replace(
        'algorithms = ["protonet"]', 'algorithms = ["protonet", "exploding", "wrong_shape", "nan_loss"]'))
    assert main(["run", str(suite), *env, "--plugins-dir", str(plugdir)]) == 1
    recs = {r["config"]["algorithm"]: r for r in _records(tmp_path / "results" / "mixed").values()}
    assert recs["protonet"]["status"] == "ok"
    assert recs["exploding"]["failed_plugin"] == "algorithm:exploding"
    assert "boom at step 3" in recs["exploding"]["error"]
    assert "predict() must return logits of shape (40, 25, 5)" in recs["wrong_shape"]["error"]
    assert "non-finite meta-training loss" in recs["nan_loss"]["error"]
    err = capsys.readouterr().err
    assert "1 ran" in err and "3 failed" in err and "boom at step 3" in err
    # a re-run retries only the failed runs
    assert main(["run", str(suite), *env, "--plugins-dir", str(plugdir)]) == 1
    assert "1 skipped" in capsys.readouterr().err


def test_an_algorithms_own_clustering_is_scored_beside_kmeans(tmp_path, env):
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    (plugdir / "bad.py").write_text(GARBAGE_PLUGIN)
    suite = write_suite(tmp_path / "own.toml", TINY_DIGITS.replace('name = "tiny"', 'name = "own"').replace(
        'algorithms = ["protonet"]', 'algorithms = ["protonet", "nearest_seed", "bad_clusters"]').replace(
        "test_episodes = 40", "test_episodes = 40\n    cluster_tasks = 12"))
    assert main(["run", str(suite), *env, "--plugins-dir", str(plugdir)]) == 1
    recs = {r["config"]["algorithm"]: r for r in _records(tmp_path / "results" / "own").values()}
    m = recs["nearest_seed"]["evaluations"][0]["metrics"]
    assert 0 <= m["own_nmi"] <= 1 and m["own_nmi_ci95"] > 0
    assert "own_nmi" not in recs["protonet"]["evaluations"][0]["metrics"]
    assert m["own_nmi"] != m["nmi"] and m["cluster_tasks"] == 12
    assert "cluster() must return int64 cluster ids [12, 30]" in recs["bad_clusters"]["error"]
    assert recs["bad_clusters"]["failed_plugin"] == "algorithm:bad_clusters"
    assert main(["leaderboard", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "lb")]) == 0
    board = (tmp_path / "lb" / "README.md").read_text()
    # the per-protocol table (after the papers' layout table, which has no clustering columns)
    row = [line for line in board.splitlines() if line.startswith("| nearest_seed")][-1]
    assert "Own NMI" in board and f"{m['own_nmi']:.3f}" in row


def test_missing_dataset_fails_that_run_with_where_it_looked(tmp_path, env):
    suite = write_suite(tmp_path / "m.toml", TINY_DIGITS.replace('datasets = ["digits"]',
                                                                'datasets = ["mnist", "digits"]'))
    assert main(["run", str(suite), *env]) == 1
    recs = {r["config"]["dataset"]: r for r in _records(tmp_path / "results" / "tiny").values()}
    assert recs["digits"]["status"] == "ok"
    assert recs["mnist"]["failed_plugin"] == "dataset:mnist"
    assert "DatasetNotFoundError" in recs["mnist"]["error"] and str(tmp_path / "no-data") in recs["mnist"]["error"]


def test_unknown_plugin_or_option_stops_before_any_run(tmp_path, env, capsys):
    suite = write_suite(tmp_path / "u.toml", TINY_DIGITS.replace('algorithms = ["protonet"]',
                                                                'algorithms = ["protonet", "mamll"]'))
    assert main(["run", str(suite), *env]) == 2
    assert "unknown algorithm 'mamll'" in capsys.readouterr().err
    suite = write_suite(tmp_path / "o.toml", TINY_DIGITS.replace("hidden = 16", "hiden = 16"))
    assert main(["run", str(suite), *env]) == 2
    assert "protonet: unknown option(s) ['hiden']" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_protonet_learns_omniglot(tmp_path, data_root, cache_dir):
    suite = write_suite(tmp_path / "omni.toml", """
        name = "omni"
        datasets = ["omniglot"]
        task_generators = ["oracle"]
        algorithms = ["protonet"]
        [[protocols]]
        ways = 5
        shots = 1
        queries = 5
        train_ways = 20
        [budget]
        steps = 60
        meta_batch = 1
        test_episodes = 200
    """)
    args = ["--results", str(tmp_path / "r"), "--cache-dir", str(cache_dir), "--data-root", str(data_root)]
    assert main(["run", str(suite), *args]) == 0
    (rec,) = _records(tmp_path / "r" / "omni").values()
    # chance is 20%; 60 episodes of 20-way training already separate new Omniglot characters well
    assert rec["evaluations"][0]["metrics"]["accuracy_mean"] > 0.7, rec["evaluations"]
    assert main(["leaderboard", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "lb")]) == 0
    assert "omniglot — 5-way 1-shot" in (tmp_path / "lb" / "README.md").read_text()
