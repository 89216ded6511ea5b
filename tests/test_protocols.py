"""Train once, evaluate on several test protocols: suite syntax, per-way training, records v3 (and v2 read
as v3), and the papers' table layout."""
from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from metabench.commands.cli import main
from metabench.engine.records import SCHEMA_VERSION, read_record, write_record
from metabench.engine.registry import discover
from metabench.engine.runner import Settings, SuiteRunner
from metabench.engine.suite import SuiteError, parse_suite
from metabench.engine.suite import TestShape as Shape
from metabench.report.summary import paper_tables, summarize
from tests.helpers import make_record, make_v2_record, write_suite

TESTS = [{"ways": 5, "shots": 1, "queries": 5}, {"ways": 5, "shots": 5, "queries": 5},
         {"ways": 10, "shots": 1, "queries": 5}]


def _suite(algorithms=("protonet",), protocols=None, **extra):
    return {"name": "multi", "datasets": ["digits"], "task_generators": ["oracle"], "algorithms": list(algorithms),
            "protocols": protocols or [{"train_ways": 5, "train_shots": 1, "train_queries": 5, "tests": TESTS}],
            "budget": {"steps": 4, "meta_batch": 2, "test_episodes": 20, "cluster_tasks": 5}, **extra}


def test_a_protocol_with_tests_is_one_run_with_every_test():
    (run,) = parse_suite(_suite(), "x").runs()
    assert [t.tag for t in run.protocol.tests] == ["5w1s5q", "5w5s5q", "10w1s5q"]
    assert run.run_id.startswith("digits__oracle__protonet__train5w1s5q-5w1s5q+5w5s5q+10w1s5q__seed0__")
    assert run.config()["tests"] == TESTS
    # the test episodes depend on (dataset, test protocol, seed) only: the same as a one-test run's
    (single,) = parse_suite(_suite(protocols=[TESTS[1]]), "x").runs()
    assert run.test_seed(Shape(5, 5, 5)) == single.test_seed() != run.test_seed()
    assert "tests" not in single.config()  # a one-test protocol keeps today's config, hence today's run ids


@pytest.mark.parametrize("protocol, message", [
    ({"ways": 5, "shots": 1, "queries": 5, "tests": TESTS}, "give the test protocols in 'tests' only"),
    ({"tests": []}, "non-empty array"),
    ({"tests": [TESTS[0], TESTS[0]]}, "lists a test protocol twice"),
    ({"tests": [{"ways": 5, "shots": 1}]}, "protocols[0].tests[0].queries"),
    ({"tests": [{"ways": 5, "shots": 1, "queries": 5, "train_ways": 5}]}, "unknown key(s) ['train_ways']"),
])
def test_malformed_tests_name_the_key(protocol, message):
    with pytest.raises(SuiteError, match=__import__("re").escape(message)):
        parse_suite(_suite(protocols=[protocol]), "x", "s.toml")


def test_an_exclusion_drops_only_the_tests_it_matches():
    (run,) = parse_suite(_suite(exclude=[{"ways": 10}]), "x").runs()
    assert [t.tag for t in run.protocol.tests] == ["5w1s5q", "5w5s5q"]


def test_algorithms_sized_by_the_way_count_train_once_per_way_count(tmp_path):
    suite = parse_suite(_suite(algorithms=["protonet", "maml"]), "x")
    runner = SuiteRunner(suite, discover(), Settings(tmp_path, tmp_path, tmp_path))
    by_alg = {}
    for r in runner.runs():
        by_alg.setdefault(r.algorithm, []).append(r.protocol)
    assert len(by_alg["protonet"]) == 1
    assert [(p.train_ways, [t.tag for t in p.tests]) for p in by_alg["maml"]] == \
        [(5, ["5w1s5q", "5w5s5q"]), (10, ["10w1s5q"])]


def test_one_training_scored_on_every_protocol_on_the_shared_episodes(tmp_path, env):
    """embed_knn on pixels trains nothing, so each evaluation of the several-test run must equal the
    one-test run of that protocol bit-for-bit: same episodes, same clustering seeds."""
    top = 'datasets = ["digits"]\ntask_generators = ["unlabeled"]\nalgorithms = ["embed_knn"]\n'
    tables = ("[budget]\nsteps = 0\nmeta_batch = 1\ntest_episodes = 30\ncluster_tasks = 6\n"
              '[options.embed_knn]\nembedding = "pixels"\n')
    tests = ", ".join("{ways = %d, shots = %d, queries = %d}" % tuple(t.values()) for t in TESTS)
    multi = write_suite(tmp_path / "multi.toml", f'name = "multi"\n{top}[[protocols]]\ntests = [{tests}]\n{tables}')
    single = write_suite(tmp_path / "single.toml", f'name = "single"\n{top}' + "".join(
        "[[protocols]]\nways = %d\nshots = %d\nqueries = %d\n" % tuple(t.values()) for t in TESTS) + tables)
    for s in (multi, single):
        assert main(["run", str(s), *env]) == 0
    (rec,) = [read_record(p) for p in (tmp_path / "results" / "multi").glob("*.json")]
    assert rec["schema_version"] == SCHEMA_VERSION == 3
    singles = {(r["config"]["ways"], r["config"]["shots"]): r
               for r in map(read_record, (tmp_path / "results" / "single").glob("*.json"))}
    assert [(e["ways"], e["shots"], e["queries"]) for e in rec["evaluations"]] == [tuple(t.values()) for t in TESTS]
    for e in rec["evaluations"]:
        (one,) = singles[(e["ways"], e["shots"])]["evaluations"]
        assert e["metrics"] == one["metrics"]
        assert e["metrics"]["test_episodes"] == 30 and e["metrics"]["episode_queries"] == e["ways"] * 5
    # the leaderboard reads one row per evaluation
    out = tmp_path / "lb"
    assert main(["leaderboard", "--results", str(tmp_path / "results" / "multi"), "--out", str(out)]) == 0
    rows = list(open(out / "leaderboard.csv"))[1:]
    assert len(rows) == 3


def test_a_version_2_results_folder_builds_the_same_leaderboard(tmp_path):
    v2, v3 = tmp_path / "v2" / "s", tmp_path / "v3" / "s"
    v2.mkdir(parents=True)
    for i, acc in enumerate([0.81, 0.83, 0.9]):
        old = make_v2_record(f"r{i}", alg=["protonet", "protonet", "maml"][i], seed=i % 2, acc=acc)
        (v2 / f"r{i}.json").write_text(json.dumps(old))
        write_record(v3 / f"r{i}.json", make_record(f"r{i}", alg=["protonet", "protonet", "maml"][i], seed=i % 2,
                                                    acc=acc))
        assert read_record(v2 / f"r{i}.json") == read_record(v3 / f"r{i}.json")
    pages = []
    for side in ("v2", "v3"):
        out = tmp_path / f"lb-{side}"
        assert main(["leaderboard", "--results", str(tmp_path / side), "--out", str(out)]) == 0
        pages.append({n: (out / n).read_bytes() for n in ("README.md", "leaderboard.csv", "index.html")})
    assert pages[0] == pages[1]
    with pytest.raises(Exception, match="only schema version 3"):
        write_record(tmp_path / "x.json", make_v2_record())


def test_paper_table_has_a_column_per_protocol_and_a_student_t_interval_over_seeds():
    recs = [make_record(f"p{w}{k}{s}", "protonet", seed=s, acc=a, ways=w, shots=k)
            for (w, k), accs in {(5, 1): (0.90, 0.92, 0.94), (5, 5): (0.97, 0.98, 0.99)}.items()
            for s, a in enumerate(accs)]
    recs += [make_record("m51", "maml", acc=0.95, ways=5, shots=1)]
    (table,) = paper_tables(summarize(recs))
    assert table.headers == ["Algorithm", "Task generator", "Suite", "5-way 1-shot", "5-way 5-shot"]
    proto, maml = table.rows
    ci = stats.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)
    assert proto[:3] == ["protonet", "oracle", "s"] and proto[3] == f"{92:.2f} ± {100 * ci:.2f}"
    assert maml[3] == "95.00 ± 1.00 (1 seed)" and maml[4] == "–"  # fewer seeds than the table's most
