"""Suite files (TOML): the grid of runs, validated with errors that point at the offending key.

Example::

    name = "omniglot-protonet-cpu"          # optional, defaults to the file's stem
    datasets = ["omniglot"]
    task_generators = ["oracle"]
    algorithms = ["protonet"]
    seeds = [0]

    [[protocols]]                            # test-time N-way K-shot Q-query; train_* default to them
    ways = 5
    shots = 1
    queries = 15
    train_ways = 60
    train_queries = 5

    [[protocols]]                            # or: train once, test on several protocols (one evaluation
    train_ways = 20                          # each, in one record); train_* default to the first test
    train_shots = 1
    train_queries = 5
    tests = [{ways = 5, shots = 1, queries = 15}, {ways = 5, shots = 5, queries = 15},
             {ways = 20, shots = 1, queries = 15}, {ways = 20, shots = 5, queries = 15}]

    [[protocols]]                            # cross-domain: train on the suite's datasets, test on the
    ways = 5                                 # test split of another dataset (same image shape: set its
    shots = 5                                # options, e.g. [options.cifar_fs] size = 84)
    queries = 15
    test_dataset = "cub"

    [budget]
    steps = 2000                             # outer meta-training steps
    meta_batch = 1                           # tasks per step
    test_episodes = 1000

    [options.protonet]                       # per-plugin options, by plugin name
    lr = 0.001

    [budget.maml]                            # optional: a plugin's own budget (not test_episodes)
    steps = 500
    meta_batch = 8

    [options."cactus@autoencoder"]           # a variant: the cactus plugin with other options,
    embedding = "autoencoder"                # listed as "cactus@autoencoder" in task_generators

    [[exclude]]                              # optional: leave combinations out of the grid
    task_generator = "unlabeled"
    algorithm = ["protonet", "maml"]
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
from fnmatch import fnmatchcase
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from metabench.names import base_name, merge_variant_options
from metabench.seeding import derive_seed


plugin_name = base_name  # the plugin behind a suite entry (``cactus@ae`` -> ``cactus``)


class SuiteError(ValueError):
    """A suite file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class TestShape:
    """One test protocol: N-way K-shot tasks with Q queries per class."""

    ways: int
    shots: int
    queries: int

    @property
    def label(self) -> str:
        """E.g. ``5-way 1-shot``."""
        return f"{self.ways}-way {self.shots}-shot"

    @property
    def tag(self) -> str:
        """E.g. ``5w1s15q`` (in run ids)."""
        return f"{self.ways}w{self.shots}s{self.queries}q"


def episode_seed(dataset: str, test: TestShape, seed: int) -> int:
    """Seed of the test episodes of ``test`` on ``dataset`` under suite seed ``seed``."""
    return derive_seed("test-episodes", dataset, test.ways, test.shots, test.queries, seed)


def test_shapes(config: dict[str, Any]) -> list[TestShape]:
    """The test protocols of a record's ``config``: its ``tests``, else its ways/shots/queries."""
    tests = config.get("tests") or [{k: config[k] for k in ("ways", "shots", "queries")}]
    return [TestShape(t["ways"], t["shots"], t["queries"]) for t in tests]


@dataclass(frozen=True)
class Protocol:
    """The shape of meta-training tasks and the test protocols a trained model is scored on.

    ``ways``/``shots``/``queries`` are the first test's; ``more_tests`` the others (a model trained once
    and evaluated on each, as CACTUs, ProtoTransfer and PsCo report their tables)."""

    ways: int
    shots: int
    queries: int
    train_ways: int
    train_shots: int
    train_queries: int
    more_tests: tuple[TestShape, ...] = ()
    test_dataset: str = ""  # cross-domain: score on this dataset's test split ("": the run's own dataset)

    @property
    def tests(self) -> tuple[TestShape, ...]:
        """Every test protocol, the first one first."""
        return (TestShape(self.ways, self.shots, self.queries), *self.more_tests)

    @property
    def label(self) -> str:
        """E.g. ``5-way 1-shot``."""
        return f"{self.ways}-way {self.shots}-shot"

    def identity(self) -> dict[str, Any]:
        """The protocol in a run's config: today's six keys, plus ``tests`` when there are several."""
        d = {k: getattr(self, k) for k in ("ways", "shots", "queries", "train_ways", "train_shots",
                                          "train_queries")}
        if self.more_tests:
            d["tests"] = [asdict(t) for t in self.tests]
        if self.test_dataset:
            d["test_dataset"] = self.test_dataset
        return d

    @property
    def tag(self) -> str:
        """The protocol part of a run id: ``5w1s15q``; with several tests the training shape and the tests,
        ``train20w1s5q-5w1s15q+5w5s15q``; tested on another dataset, ``5w1s15q-on-cub``."""
        on = f"-on-{self.test_dataset}" if self.test_dataset else ""
        if not self.more_tests:
            return self.tests[0].tag + on
        return (f"train{self.train_ways}w{self.train_shots}s{self.train_queries}q-"
                + "+".join(t.tag for t in self.tests) + on)

    def per_way(self) -> list["Protocol"]:
        """One protocol per test way count, trained at that way count (for algorithms whose model is sized
        by the way count, ``Algorithm.trains_per_way``); a single-test protocol is left as it is."""
        if not self.more_tests:
            return [self]
        out = []
        for w in dict.fromkeys(t.ways for t in self.tests):
            tests = [t for t in self.tests if t.ways == w]
            out.append(Protocol(w, tests[0].shots, tests[0].queries, w, self.train_shots, self.train_queries,
                                tuple(tests[1:]), self.test_dataset))
        return out


@dataclass(frozen=True)
class BudgetSpec:
    """Meta-training and evaluation budgets."""

    steps: int
    meta_batch: int
    test_episodes: int
    eval_batch: int = 50
    cluster_tasks: int = 200


@dataclass(frozen=True)
class RunSpec:
    """One fully resolved run: the unit that gets one record."""

    suite: str
    dataset: str
    task_generator: str
    algorithm: str
    protocol: Protocol
    seed: int
    budget: BudgetSpec
    options: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False, compare=False)

    def config(self) -> dict[str, Any]:
        """The record's ``config`` object (without resolved plugin defaults, which the runner adds)."""
        return {"suite": self.suite, "dataset": self.dataset, "task_generator": self.task_generator,
                "algorithm": self.algorithm, **self.protocol.identity(), "seed": self.seed,
                "budget": asdict(self.budget), "options": self.options}

    @property
    def run_seed(self) -> int:
        """Seed of everything run-specific (initialisation, training episodes)."""
        return derive_seed("run", self.dataset, self.task_generator, self.algorithm,
                           self.protocol.identity(), self.seed)

    def test_seed(self, test: TestShape | None = None) -> int:
        """Seed of the episodes of ``test`` (default: the first test): they depend only on the dataset, the
        test protocol and the seed, so every generator, algorithm and training shape is scored on the same
        episodes (a paired comparison)."""
        return episode_seed(self.test_dataset, test or self.protocol.tests[0], self.seed)

    @property
    def test_dataset(self) -> str:
        """The dataset whose ``test`` split the run is scored on: the protocol's ``test_dataset``, else its own."""
        return self.protocol.test_dataset or self.dataset

    @property
    def run_id(self) -> str:
        """Readable identity plus a hash of the whole resolved config (options and budgets included)."""
        blob = json.dumps(self.config(), sort_keys=True, default=str).encode()
        h = hashlib.sha256(blob).hexdigest()[:8]
        return (f"{self.dataset}__{self.task_generator}__{self.algorithm}__"
                f"{self.protocol.tag}__seed{self.seed}__{h}")


@dataclass(frozen=True)
class Suite:
    """A parsed suite file."""

    name: str
    path: Path | None
    datasets: list[str]
    task_generators: list[str]
    algorithms: list[str]
    protocols: list[Protocol]
    seeds: list[int]
    budget: BudgetSpec
    options: dict[str, dict[str, Any]]
    description: str = ""
    exclude: list[dict[str, list[str]]] = field(default_factory=list)
    budgets: dict[str, BudgetSpec] = field(default_factory=dict)

    def options_for(self, name: str) -> dict[str, Any]:
        """Options of plugin ``name``: ``[options.<plugin>]`` updated by ``[options."<plugin>@<variant>"]``."""
        return merge_variant_options(self.options, name)

    def budget_for(self, task_generator: str, algorithm: str) -> BudgetSpec:
        """The budget with the algorithm's override (``[budget.<name>]``), else the generator's."""
        for name in (algorithm, plugin_name(algorithm), task_generator, plugin_name(task_generator)):
            if name in self.budgets:
                return self.budgets[name]
        return self.budget

    def excluded(self, dataset: str, task_generator: str, algorithm: str, test: TestShape,
                 test_dataset: str = "") -> bool:
        """True if an ``[[exclude]]`` entry matches this combination (``ways``/``shots`` match a test;
        ``test_dataset`` the dataset scoring it, the run's own unless the protocol names another)."""
        have = {"dataset": dataset, "task_generator": task_generator, "algorithm": algorithm,
                "ways": test.ways, "shots": test.shots, "test_dataset": test_dataset or dataset}
        return any(all(have[k] in values for k, values in rule.items()) for rule in self.exclude)

    def runs(self, only: tuple[str, ...] | list[str] = (),
             trains_per_way: Callable[[str], bool] | None = None) -> list[RunSpec]:
        """The grid minus the excluded combinations, in a stable order; with ``only`` (shell patterns), just
        the runs whose id matches one of them. A protocol's tests that an ``[[exclude]]`` matches are left
        out of its runs. ``trains_per_way(algorithm)`` (from the registry: ``Algorithm.trains_per_way``)
        says which algorithms get one training per test way count of a several-test protocol."""
        out = []
        for ds, gen, alg, proto, seed in itertools.product(self.datasets, self.task_generators,
                                                           self.algorithms, self.protocols, self.seeds):
            tests = [t for t in proto.tests if not self.excluded(ds, gen, alg, t, proto.test_dataset)]
            if not tests:
                continue
            if len(tests) < len(proto.tests):
                proto = Protocol(tests[0].ways, tests[0].shots, tests[0].queries, proto.train_ways,
                                 proto.train_shots, proto.train_queries, tuple(tests[1:]), proto.test_dataset)
            keys = (ds, gen, alg) + ((proto.test_dataset,) if proto.test_dataset else ())
            opts = {k: self.options_for(k) for k in keys if self.options_for(k)}
            split = trains_per_way is not None and trains_per_way(alg)
            for p in (proto.per_way() if split else [proto]):
                out.append(RunSpec(self.name, ds, gen, alg, p, seed, self.budget_for(gen, alg), opts))
        return [r for r in out if not only or any(fnmatchcase(r.run_id, p) for p in only)]


_TOP = {"name", "description", "datasets", "task_generators", "algorithms", "protocols", "seeds",
        "budget", "options", "exclude"}
_EXCLUDE = {"dataset", "task_generator", "algorithm", "ways", "shots", "test_dataset"}
_PROTO = {"ways", "shots", "queries", "train_ways", "train_shots", "train_queries", "tests", "test_dataset"}
_TEST = ("ways", "shots", "queries")
_BUDGET = {"steps", "meta_batch", "test_episodes", "eval_batch", "cluster_tasks"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _err(where: str, msg: str) -> SuiteError:
    return SuiteError(f"{where}: {msg}")


def _int(where: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _err(where, f"key '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _names(where: str, key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _err(where, f"key '{key}' must be a non-empty list of plugin names, got {value!r}")
    if len(set(value)) != len(value):
        raise _err(where, f"key '{key}' lists a name twice: {value!r}")
    return value


def _budget(where: str, key: str, b: dict[str, Any], base: BudgetSpec | None) -> BudgetSpec:
    """A :class:`BudgetSpec` from table ``b``; with ``base``, a per-plugin override of it."""
    bad = sorted(set(b) - _BUDGET)
    if bad:
        raise _err(where, f"unknown key(s) {bad} in '{key}'; allowed: {sorted(_BUDGET)}")
    if base is None:
        for req in ("steps", "meta_batch", "test_episodes"):
            if req not in b:
                raise _err(where, f"missing key '{key}.{req}'")
        b = {"eval_batch": 50, "cluster_tasks": 200, **b}
    else:
        if "test_episodes" in b:
            raise _err(where, f"'{key}.test_episodes' cannot be overridden: every run of a protocol is "
                              "scored on the same test episodes")
        b = {**asdict(base), **b}
    return BudgetSpec(_int(where, f"{key}.steps", b["steps"], 0),
                      _int(where, f"{key}.meta_batch", b["meta_batch"], 1),
                      _int(where, f"{key}.test_episodes", b["test_episodes"], 2),
                      _int(where, f"{key}.eval_batch", b["eval_batch"], 1),
                      _int(where, f"{key}.cluster_tasks", b["cluster_tasks"], 0))


def _ints(where: str, key: str, value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [_int(where, key, v, 1) for v in values]


def _test(where: str, key: str, t: Any) -> TestShape:
    if not isinstance(t, dict):
        raise _err(where, f"key '{key}' must be a table with keys {list(_TEST)}, got {t!r}")
    bad = sorted(set(t) - set(_TEST))
    if bad:
        raise _err(where, f"unknown key(s) {bad} in '{key}'; allowed: {list(_TEST)}")
    for req in _TEST:
        if req not in t:
            raise _err(where, f"missing key '{key}.{req}'")
    return TestShape(_int(where, f"{key}.ways", t["ways"], 2), _int(where, f"{key}.shots", t["shots"], 1),
                     _int(where, f"{key}.queries", t["queries"], 1))


def _tests(where: str, key: str, p: dict[str, Any]) -> list[TestShape]:
    """The test protocols of ``[[protocols]]`` entry ``p``: its ``tests`` list, or its own ways/shots/queries."""
    if "tests" not in p:
        return [_test(where, key, {k: p[k] for k in _TEST if k in p})]
    if set(_TEST) & set(p):
        raise _err(where, f"'{key}' has 'tests' and also {sorted(set(_TEST) & set(p))}: give the test "
                          "protocols in 'tests' only (the training shape in train_ways/train_shots/train_queries)")
    raw = p["tests"]
    if not isinstance(raw, list) or not raw:
        raise _err(where, f"key '{key}.tests' must be a non-empty array of tables {{ways, shots, queries}}")
    tests = [_test(where, f"{key}.tests[{i}]", t) for i, t in enumerate(raw)]
    if len(set(tests)) != len(tests):
        raise _err(where, f"key '{key}.tests' lists a test protocol twice")
    return tests


def parse_suite(data: dict[str, Any], name: str, where: str = "<suite>", path: Path | None = None) -> Suite:
    """Validate a suite's TOML data; :class:`SuiteError` names ``where`` and the bad key."""
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise _err(where, f"unknown key(s) {unknown}; allowed: {sorted(_TOP)}")
    for key in ("datasets", "task_generators", "algorithms", "protocols", "budget"):
        if key not in data:
            raise _err(where, f"missing required key '{key}'")
    name = data.get("name", name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise _err(where, f"key 'name' must be a simple name (letters, digits, _ . -), got {name!r}")
    protos_raw = data["protocols"]
    if not isinstance(protos_raw, list) or not protos_raw:
        raise _err(where, "key 'protocols' must be a non-empty array of tables ([[protocols]])")
    protocols = []
    for i, p in enumerate(protos_raw):
        key = f"protocols[{i}]"
        if not isinstance(p, dict):
            raise _err(where, f"key '{key}' must be a table")
        bad = sorted(set(p) - _PROTO)
        if bad:
            raise _err(where, f"unknown key(s) {bad} in '{key}'; allowed: {sorted(_PROTO)}")
        tests = _tests(where, key, p)
        first = tests[0]
        test_dataset = p.get("test_dataset", "")
        if "test_dataset" in p and (not isinstance(test_dataset, str) or not _NAME.match(test_dataset)):
            raise _err(where, f"key '{key}.test_dataset' must be a dataset name, got {test_dataset!r}")
        protocols.append(Protocol(
            first.ways, first.shots, first.queries,
            _int(where, f"{key}.train_ways", p.get("train_ways", first.ways), 2),
            _int(where, f"{key}.train_shots", p.get("train_shots", first.shots), 1),
            _int(where, f"{key}.train_queries", p.get("train_queries", first.queries), 1),
            tuple(tests[1:]), test_dataset))
    b = data["budget"]
    if not isinstance(b, dict):
        raise _err(where, "key 'budget' must be a table")
    overrides_raw = {k: v for k, v in b.items() if isinstance(v, dict)}
    b = {k: v for k, v in b.items() if not isinstance(v, dict)}
    budget = _budget(where, "budget", b, None)
    overrides = {name: _budget(where, f"budget.{name}", o, budget) for name, o in overrides_raw.items()}
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or len(set(map(repr, seeds))) != len(seeds):
        raise _err(where, f"key 'seeds' must be a non-empty list of distinct integers, got {seeds!r}")
    seeds = [_int(where, "seeds", s, 0) for s in seeds]
    options = data.get("options", {})
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise _err(where, "key 'options' must hold one table per plugin, e.g. [options.protonet]")
    datasets = _names(where, "datasets", data["datasets"])
    gens = _names(where, "task_generators", data["task_generators"])
    algs = _names(where, "algorithms", data["algorithms"])
    known = set(datasets) | set(gens) | set(algs) | {p.test_dataset for p in protocols if p.test_dataset}
    known |= {plugin_name(n) for n in known}
    for table, names in (("options", options), ("budget", overrides)):
        stray = sorted(set(names) - known)
        if stray:
            raise _err(where, f"[{table}.{stray[0]}] names no dataset, task generator or algorithm of this "
                              "suite")
    exclude = []
    raw = data.get("exclude", [])
    if not isinstance(raw, list):
        raise _err(where, "key 'exclude' must be an array of tables ([[exclude]])")
    for i, rule in enumerate(raw):
        if not isinstance(rule, dict) or not rule or set(rule) - _EXCLUDE:
            raise _err(where, f"key 'exclude[{i}]' must be a table with keys among {sorted(_EXCLUDE)}, "
                              f"got {rule!r}")
        exclude.append({k: _ints(where, f"exclude[{i}].{k}", v) if k in ("ways", "shots")
                        else _names(where, f"exclude[{i}].{k}", v) for k, v in rule.items()})
    desc = data.get("description", "")
    suite = Suite(name, path, datasets, gens, algs, protocols, seeds, budget, options, str(desc), exclude,
                  overrides)
    if not suite.runs():
        raise _err(where, "the suite's grid is empty once [[exclude]] is applied")
    return suite


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(f"{path}: no such suite file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: not valid TOML: {exc}") from None
    return parse_suite(data, path.stem, str(path), path)
