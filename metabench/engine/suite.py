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
from typing import Any

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
class Protocol:
    """Test-time task shape plus the shape of meta-training tasks."""

    ways: int
    shots: int
    queries: int
    train_ways: int
    train_shots: int
    train_queries: int

    @property
    def label(self) -> str:
        """E.g. ``5-way 1-shot``."""
        return f"{self.ways}-way {self.shots}-shot"


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
                "algorithm": self.algorithm, **asdict(self.protocol), "seed": self.seed,
                "budget": asdict(self.budget), "options": self.options}

    @property
    def run_seed(self) -> int:
        """Seed of everything run-specific (initialisation, training episodes)."""
        return derive_seed("run", self.dataset, self.task_generator, self.algorithm,
                           asdict(self.protocol), self.seed)

    @property
    def test_seed(self) -> int:
        """Seed of the test episodes: the same for every generator and algorithm (a paired comparison)."""
        p = self.protocol
        return derive_seed("test-episodes", self.dataset, p.ways, p.shots, p.queries, self.seed)

    @property
    def run_id(self) -> str:
        """Readable identity plus a hash of the whole resolved config (options and budgets included)."""
        blob = json.dumps(self.config(), sort_keys=True, default=str).encode()
        h = hashlib.sha256(blob).hexdigest()[:8]
        p = self.protocol
        return (f"{self.dataset}__{self.task_generator}__{self.algorithm}__"
                f"{p.ways}w{p.shots}s{p.queries}q__seed{self.seed}__{h}")


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

    def excluded(self, dataset: str, task_generator: str, algorithm: str, protocol: Protocol) -> bool:
        """True if an ``[[exclude]]`` entry matches this combination."""
        have = {"dataset": dataset, "task_generator": task_generator, "algorithm": algorithm,
                "ways": protocol.ways, "shots": protocol.shots}
        return any(all(have[k] in values for k, values in rule.items()) for rule in self.exclude)

    def runs(self, only: tuple[str, ...] | list[str] = ()) -> list[RunSpec]:
        """The grid minus the excluded combinations, in a stable order; with ``only`` (shell patterns), just
        the runs whose id matches one of them."""
        out = []
        for ds, gen, alg, proto, seed in itertools.product(self.datasets, self.task_generators,
                                                           self.algorithms, self.protocols, self.seeds):
            if self.excluded(ds, gen, alg, proto):
                continue
            opts = {k: self.options_for(k) for k in (ds, gen, alg) if self.options_for(k)}
            out.append(RunSpec(self.name, ds, gen, alg, proto, seed, self.budget_for(gen, alg), opts))
        return [r for r in out if not only or any(fnmatchcase(r.run_id, p) for p in only)]


_TOP = {"name", "description", "datasets", "task_generators", "algorithms", "protocols", "seeds",
        "budget", "options", "exclude"}
_EXCLUDE = {"dataset", "task_generator", "algorithm", "ways", "shots"}
_PROTO = {"ways", "shots", "queries", "train_ways", "train_shots", "train_queries"}
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
        for req in ("ways", "shots", "queries"):
            if req not in p:
                raise _err(where, f"missing key '{key}.{req}'")
        ways = _int(where, f"{key}.ways", p["ways"], 2)
        shots = _int(where, f"{key}.shots", p["shots"], 1)
        queries = _int(where, f"{key}.queries", p["queries"], 1)
        protocols.append(Protocol(
            ways, shots, queries,
            _int(where, f"{key}.train_ways", p.get("train_ways", ways), 2),
            _int(where, f"{key}.train_shots", p.get("train_shots", shots), 1),
            _int(where, f"{key}.train_queries", p.get("train_queries", queries), 1)))
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
    known = set(datasets) | set(gens) | set(algs)
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
