"""Suite parsing: validation errors point at the file and the key; identities and seeds are stable."""
from __future__ import annotations

import pytest

from metabench.engine.suite import SuiteError, load_suite, parse_suite
from tests.helpers import TINY_DIGITS, write_suite

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport, a dependency there
    import tomli as tomllib


def _data(**over):
    d = tomllib.loads(TINY_DIGITS.replace("\n    ", "\n"))
    d.update(over)
    return d


def test_the_tiny_suite_parses_into_its_grid(tmp_path):
    suite = load_suite(write_suite(tmp_path / "x.toml", TINY_DIGITS))
    (run,) = suite.runs()
    assert (run.dataset, run.task_generator, run.algorithm, run.protocol.ways, run.protocol.train_ways) == \
        ("digits", "oracle", "protonet", 5, 5)
    assert run.options == {"protonet": {"hidden": 16}}
    assert run.run_id.startswith("digits__oracle__protonet__5w1s5q__seed0__")


@pytest.mark.parametrize("change, message", [
    ({"algoritms": ["x"]}, r"unknown key\(s\) \['algoritms'\]"),
    ({"protocols": [{"ways": 1, "shots": 1, "queries": 1}]}, r"'protocols\[0\].ways' must be an integer >= 2"),
    ({"protocols": [{"ways": 5, "shots": 1}]}, r"missing key 'protocols\[0\].queries'"),
    ({"budget": {"steps": 10, "meta_batch": 1}}, r"missing key 'budget.test_episodes'"),
    ({"budget": {"steps": "ten", "meta_batch": 1, "test_episodes": 5}}, r"'budget.steps' must be an integer"),
    ({"seeds": [0, 0]}, r"distinct"),
    ({"datasets": []}, r"'datasets' must be a non-empty list"),
    ({"options": {"maml": {"lr": 1}}}, r"\[options.maml\] names no dataset"),
])
def test_bad_keys_are_named(change, message):
    with pytest.raises(SuiteError, match=message):
        parse_suite(_data(**change), "x", "suites/x.toml")


def test_not_toml_names_the_file(tmp_path):
    path = write_suite(tmp_path / "broken.toml", "datasets = [\n")
    with pytest.raises(SuiteError, match="broken.toml: not valid TOML"):
        load_suite(path)


def test_seeds_depend_on_identity_not_on_options():
    a = parse_suite(_data(), "x").runs()[0]
    b = parse_suite(_data(options={"protonet": {"hidden": 32}}), "x").runs()[0]
    c = parse_suite(_data(seeds=[1]), "x").runs()[0]
    assert a.run_seed == b.run_seed and a.run_id != b.run_id   # options change the record, not the init
    assert a.run_seed != c.run_seed and a.test_seed() != c.test_seed()
    d = parse_suite(_data(algorithms=["other"], options={}), "x").runs()[0]
    assert d.test_seed() == a.test_seed() and d.run_seed != a.run_seed  # same test episodes for every algorithm


def test_variants_overrides_and_exclusions():
    suite = parse_suite(_data(
        task_generators=["oracle", "cactus", "cactus@ae"], algorithms=["protonet", "maml"],
        options={"cactus": {"partitions": 3}, "cactus@ae": {"embedding": "autoencoder"}},
        budget={"steps": 10, "meta_batch": 1, "test_episodes": 5, "maml": {"steps": 4, "meta_batch": 8}},
        exclude=[{"task_generator": ["cactus", "cactus@ae"], "algorithm": "maml"}]), "x")
    runs = {(r.task_generator, r.algorithm): r for r in suite.runs()}
    assert set(runs) == {("oracle", "protonet"), ("cactus", "protonet"), ("cactus@ae", "protonet"),
                         ("oracle", "maml")}
    assert runs["cactus@ae", "protonet"].options["cactus@ae"] == {"partitions": 3, "embedding": "autoencoder"}
    assert runs["cactus", "protonet"].options["cactus"] == {"partitions": 3}
    assert (runs["oracle", "maml"].budget.steps, runs["oracle", "maml"].budget.meta_batch) == (4, 8)
    assert runs["oracle", "maml"].budget.test_episodes == 5 and runs["oracle", "protonet"].budget.steps == 10
    with pytest.raises(SuiteError, match="cannot be overridden"):
        parse_suite(_data(budget={"steps": 1, "meta_batch": 1, "test_episodes": 5,
                                  "protonet": {"test_episodes": 9}}), "x")
    two = parse_suite(_data(protocols=[{"ways": 5, "shots": 1, "queries": 1}, {"ways": 10, "shots": 1, "queries": 1}],
                            datasets=["digits", "mnist"], exclude=[{"dataset": "digits", "ways": 10},
                                                                   {"dataset": "mnist", "ways": [5]}]), "x")
    assert {(r.dataset, r.protocol.ways) for r in two.runs()} == {("digits", 5), ("mnist", 10)}
    with pytest.raises(SuiteError, match="grid is empty"):
        parse_suite(_data(exclude=[{"algorithm": "protonet"}]), "x")
