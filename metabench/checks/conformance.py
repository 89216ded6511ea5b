"""``metabench check-plugin``: a conformance battery for one plugin, before it goes on a leaderboard.

Every plugin: found through its hook, honours the contract of its kind (subclass, ``name``, ``defaults``,
no abstract method left), its class pickles by reference, and a smoke run of a tiny suite with reference
partners (the plugins that declare ``smoke_partner``: a small dataset, a task generator, an algorithm)
ends with an ``ok`` record; by default that run happens in a fresh worker process through the ``process``
executor, which is how ``process`` and ``ray`` runs find the plugin. Then, by kind:

* dataset: ``load`` returns an :class:`~metabench.contracts.ImageSet` (uint8 images), ``train`` and ``test``
  splits that are disjoint and in range, enough classes for a 5-way test task, and the same tensors twice;
* task generator: ``sample`` gives an :class:`~metabench.contracts.EpisodeBatch` of the promised shapes,
  dtypes and labels with images in [0, 1]; the same seed gives the same batch and another seed another one;
  an unsupervised generator (``uses_labels = False``) is handed an ``UnlabeledSplit`` and gives identical
  batches when the labels of the data are permuted;
* algorithm: ``setup``, ``meta_train`` (finite losses), ``predict`` (logits ``[T, N*Q, N]``) and ``embed``
  (features ``[M, D]``) behave, and a tiny run is bit-identical under the same seed;
* task generator and algorithm: the sealed isolation check (:mod:`metabench.checks.sealed_check`): the
  smoke suite on a secret synthetic dataset gives the same numbers sealed and in this process, with no
  broken seal. A plugin that passes every check is stamped at its code digest
  (:mod:`metabench.engine.check_stamps`), and ``run`` marks its records ``isolation.checked``.

:func:`check_plugin` returns :class:`CheckResult` tuples ``(check, ok, message)``; ``ok`` is ``None`` for a
check that could not apply (e.g. a dataset whose files are absent).
"""
from __future__ import annotations

import inspect
import io
import json
import math
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from metabench.contracts import (KINDS, Budget, DataContext, DatasetNotFoundError, EpisodeBatch, ImageSet,
                                 LabeledSplit, RunContext, UnlabeledSplit)
from metabench.toolkit.episodes import EpisodeSampler
from metabench.engine.registry import HOOKS, PluginInfo, Registry, UnknownPluginError, discover
from metabench.engine.runner import Settings, SuiteRunner
from metabench.engine.suite import parse_suite
from metabench.engine import check_stamps, plugin_probe, sandbox, sealed
from metabench.engine.paths import default_cache_dir, default_data_root
from metabench.checks.sealed_check import compare, numbers, sealed_isolation, secret_dataset, secret_run
from metabench.execution.executors import LocalExecutor, ProcessExecutor, run_suite
from metabench.seeding import derive_seed, make_generator

WAYS, SHOTS, QUERIES, TASKS = 5, 1, 3, 2  # the shape of every task the battery asks for
_CONFINED_TIMEOUT_S = 3600  # the sandboxed checks of an outside plugin


class CheckResult(NamedTuple):
    """One line of the report: the check, whether it passed (``None``: did not apply) and why."""

    check: str
    ok: bool | None
    message: str


class Problem(Exception):
    """A check failed; the message says what is wrong."""


class _Skip(Exception):
    """A check does not apply; the message says why."""


class _Battery:
    """Collects results; a check whose prerequisites did not pass reports 'not run'."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []
        self.passed: set[str] = set()

    def run(self, name: str, fn: Callable[[list[str]], Any], needs: Sequence[str] = ()) -> Any:
        """Run check ``fn(note)`` (``note``: a list its message parts go to); returns what ``fn`` returns,
        or None if it did not pass."""
        missing = [n for n in needs if n not in self.passed]
        if missing:
            self.results.append(CheckResult(name, None, f"not run: needs {', '.join(missing)}"))
            return None
        note: list[str] = []
        try:
            value = fn(note)
        except _Skip as exc:
            self.results.append(CheckResult(name, None, str(exc)))
        except Problem as exc:
            self.results.append(CheckResult(name, False, str(exc)))
        except Exception as exc:  # a plugin raising is a failure of that check, named as such
            self.results.append(CheckResult(name, False, f"raised {type(exc).__name__}: {exc}"))
        else:
            self.passed.add(name)
            self.results.append(CheckResult(name, True, "; ".join(note)))
            return value
        return None


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise Problem(msg)


def _same_batch(a: EpisodeBatch, b: EpisodeBatch) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("support_x", "support_y", "query_x",
                                                                  "query_y"))


def partner(registry: Registry, kind: str, needs_tasks: bool | None = None) -> tuple[str, dict[str, Any]]:
    """The reference partner of ``kind`` (the first by name whose class declares ``smoke_partner``) and
    its options; a task generator partner gives tasks; ``needs_tasks`` picks an algorithm partner that
    does (True) or does not (False) learn from tasks."""
    for name, info in sorted(registry.plugins[kind].items()):
        opts = vars(info.cls).get("smoke_partner")
        if opts is None or (kind == "task_generator" and not info.cls.gives_tasks) \
                or (needs_tasks is not None and info.cls.needs_tasks != needs_tasks):
            continue
        return name, dict(opts)
    want = "" if needs_tasks is None else (" that learns from tasks" if needs_tasks else " that needs no tasks")
    raise Problem(f"no installed {kind.replace('_', ' ')}{want} declares `smoke_partner`, so there is nothing "
                  "to check this plugin with (the built-in plugins declare some: is metabench installed?)")


def _reference_data(registry: Registry, data_root: Path, cache_dir: Path) -> ImageSet:
    name, opts = partner(registry, "dataset")
    info, resolved = registry.resolve("dataset", name, opts)
    return info.cls().load(DataContext(data_root, cache_dir, resolved))


def _context(seed: int, image_shape: tuple[int, int, int], options: dict[str, Any], cache_dir: Path,
             unlabeled: UnlabeledSplit | None = None, dataset: str = "") -> RunContext:
    """The ``RunContext`` of a check; ``dataset``: the reference data's name, as ``run`` gives it."""
    return RunContext(torch.device("cpu"), seed, WAYS, SHOTS, QUERIES, image_shape, options, cache_dir,
                      unlabeled=unlabeled, dataset=dataset)


# ------------------------------------------------------------------------------------------- common


def _check_contract(b: _Battery, info: PluginInfo, options: dict[str, Any]) -> dict[str, Any] | None:
    cls = info.cls

    def contract(note: list[str]) -> dict[str, Any]:
        base = HOOKS[info.kind][1]
        _require(issubclass(cls, base), f"{cls.__qualname__} is not a {base.__name__} subclass")
        _require(cls.name == info.name, f"class attribute name is {cls.name!r}, registered as {info.name!r}")
        abstract = sorted(getattr(cls, "__abstractmethods__", ()))
        _require(not inspect.isabstract(cls), f"{cls.__qualname__} leaves abstract method(s) "
                                              f"{abstract} unimplemented")
        _require(isinstance(cls.defaults, dict) and all(isinstance(k, str) for k in cls.defaults),
                 "`defaults` must be a dict of option name -> default value")
        resolved = cls.resolve_options(options)
        cls()  # the runner instantiates plugins without arguments
        if info.kind == "task_generator":
            _require(isinstance(cls.uses_labels, bool), "`uses_labels` must be True or False")
        note.append(f"options {resolved}")
        if not cls.description:
            note.append("no `description` (the docstring's first line is shown instead)")
        return resolved

    return b.run("contract", contract)


def _check_pickle(b: _Battery, cls: type, instance: Any) -> None:
    def picklable(note: list[str]) -> None:
        try:
            again = pickle.loads(pickle.dumps(cls))
        except Exception as exc:
            raise Problem(f"the class does not pickle ({type(exc).__name__}: {exc}); define it at the top "
                          f"level of an importable module") from None
        _require(again is cls, f"unpickling {cls.__qualname__} gives another class ({again!r}): define it "
                               "at the top level of its module")
        note.append("class pickles by reference")
        if instance is not None:
            try:
                pickle.dumps(instance)
                note.append("an instance (after setup) pickles too")
            except Exception as exc:  # informational: executors rebuild plugins in each worker
                note.append(f"an instance (after setup) does not pickle ({type(exc).__name__}); fine for "
                            "metabench's executors, which build plugins inside each worker")

    b.run("picklable", picklable)


def smoke_suite(registry: Registry, kind: str, name: str, options: dict[str, Any],
                no_tasks: bool = False) -> dict[str, Any]:
    """The tiny suite (as TOML data) that smoke-runs plugin ``name`` of ``kind`` with the reference
    partners of the other kinds (an algorithm that needs no tasks beside a generator that gives none)."""
    grid, opts = {kind: name}, {}
    for other in KINDS:
        if other != kind:
            grid[other], partner_opts = partner(registry, other, not no_tasks if other == "algorithm" else None)
            if partner_opts:
                opts[grid[other]] = partner_opts
    if options:
        opts[name] = dict(options)
    return {"name": f"check-{name}", "datasets": [grid["dataset"]], "task_generators": [grid["task_generator"]],
            "algorithms": [grid["algorithm"]], "seeds": [0],
            "protocols": [{"ways": WAYS, "shots": SHOTS, "queries": QUERIES}],
            "budget": {"steps": 3, "meta_batch": TASKS, "test_episodes": 10, "eval_batch": 10,
                       "cluster_tasks": 3},
            "options": opts}


def _check_smoke(b: _Battery, info: PluginInfo, registry: Registry, options: dict[str, Any],
                 plugins_dirs: Sequence[Path], data_root: Path, cache_dir: Path, isolated: bool,
                 no_tasks: bool) -> None:

    def smoke(note: list[str]) -> None:
        suite = parse_suite(smoke_suite(registry, info.kind, info.name, options, no_tasks), f"check-{info.name}")
        with tempfile.TemporaryDirectory(prefix="metabench-check-") as tmp:
            settings = Settings(Path(tmp), data_root, cache_dir)
            executor = (ProcessExecutor(1, threads=torch.get_num_threads(), plugins_dirs=plugins_dirs)
                        if isolated else LocalExecutor())
            (outcome,) = run_suite(SuiteRunner(suite, registry, settings), executor)
        rec = outcome.record or {}
        if outcome.status != "ok":
            if "DatasetNotFoundError" in str(outcome.error):
                raise _Skip(f"dataset files absent: {outcome.error}")
            raise Problem(f"the tiny smoke suite failed in {rec.get('failed_plugin')}: {outcome.error}")
        m = rec["evaluations"][0]["metrics"]
        note.append(f"{outcome.run_id}: accuracy {100 * m['accuracy_mean']:.1f}% on {m['test_episodes']} "
                    f"episodes" + (" in a fresh worker process" if isolated else ""))

    b.run("smoke run (worker process)" if isolated else "smoke run", smoke, needs=["contract"])


SEALED = "sealed isolation"


def _check_sealed(b: _Battery, info: PluginInfo, registry: Registry, options: dict[str, Any], data_root: Path,
                  cache_dir: Path, no_tasks: bool, in_reach: InReach | None = None) -> None:
    """The smoke suite on a secret synthetic dataset in a sealed worker and in this process
    (:mod:`metabench.checks.sealed_check`): the same numbers both ways, no broken seal. ``in_reach``: only
    the run in this process, on the given secret data (the confined check's sandboxed child; the sealed
    half ran in the supervisor), its numbers kept in ``in_reach.numbers``."""

    def check(note: list[str]) -> None:
        if info.kind == "dataset":
            raise _Skip("datasets are read by the supervisor, which holds the labels; not sealed")
        if in_reach is not None:
            record, problem = secret_run(in_reach.suite, registry, in_reach.data, [], data_root, cache_dir,
                                         seal=False)
            if problem:
                raise Problem(problem)
            in_reach.numbers = numbers(record)
            note.append("ran in reach of the labels")
            return
        ok, why = sealed.supported()
        if not ok:
            raise _Skip(f"cannot seal here ({why}): the plugin is not stamped as checked")
        reference, files = sandbox.opened_files(lambda: _reference_data(registry, data_root, cache_dir))
        data = secret_dataset(reference.name, reference.image_shape)
        problem = sealed_isolation(smoke_suite(registry, info.kind, info.name, options, no_tasks), registry,
                                   data, files, data_root, cache_dir, note)
        if problem:
            raise Problem(problem)

    b.run(SEALED, check, needs=["contract"])


class InReach:
    """The in-reach half of the sealed isolation check, handed to a confined check's sandboxed child: the
    secret ``data`` and smoke ``suite`` the supervisor ran sealed; ``numbers`` gets the child's results."""

    def __init__(self, data: ImageSet, suite: dict[str, Any]) -> None:
        self.data, self.suite, self.numbers = data, suite, None


# ------------------------------------------------------------------------------------------- by kind


def _check_dataset(b: _Battery, info: PluginInfo, opts: dict[str, Any], data_root: Path,
                   cache_dir: Path) -> Any:
    ds = info.cls()

    def load(note: list[str]) -> ImageSet:
        try:
            data = ds.load(DataContext(data_root, cache_dir, opts))
        except DatasetNotFoundError as exc:
            raise _Skip(f"data absent, checks skipped: {exc}") from None
        _require(isinstance(data, ImageSet), f"load() must return an ImageSet, got {type(data).__name__}")
        note.append(f"{data.images.shape[0]} images {tuple(data.image_shape)} uint8, "
                    f"{int(data.labels.unique().numel())} classes")
        return data

    data = b.run("load", load, needs=["contract"])

    def images(note: list[str]) -> None:
        img = data.images
        _require(img.dtype == torch.uint8 and img.dim() == 4, f"images must be uint8 [N, C, H, W], got "
                                                              f"{img.dtype} {tuple(img.shape)}")
        _require(img.shape[0] > 0 and 1 <= img.shape[1] <= 4, f"images {tuple(img.shape)}: want N > 0 and "
                                                               "1..4 channels")
        _require(data.labels.dtype == torch.int64, f"labels must be int64, got {data.labels.dtype}")

    def splits(note: list[str]) -> None:
        _require({"train", "test"} <= set(data.splits), f"splits must include 'train' and 'test', got "
                                                        f"{sorted(data.splits)}")
        n = data.images.shape[0]
        seen: dict[str, set[int]] = {}
        for split, idx in data.splits.items():
            _require(idx.numel() > 0, f"split {split!r} is empty")
            _require(int(idx.min()) >= 0 and int(idx.max()) < n,
                     f"split {split!r} has indices outside 0..{n - 1}")
            members = set(idx.tolist())
            _require(len(members) == idx.numel(), f"split {split!r} lists an image twice")
            for other, theirs in seen.items():
                both = members & theirs
                if both:
                    raise Problem(f"splits {other!r} and {split!r} share {len(both)} image(s), e.g. index "
                                  f"{min(both)}: splits must be disjoint")
            seen[split] = members
        test = data.split("test")
        counts = torch.unique(test.labels, return_counts=True)[1]
        usable = int((counts >= SHOTS + QUERIES).sum())
        _require(usable >= WAYS, f"the test split has {usable} classes with >= {SHOTS + QUERIES} images; a "
                                 f"{WAYS}-way task needs {WAYS}")
        by_class = not set(data.split("train").labels.tolist()) & set(test.labels.tolist())
        note.append(", ".join(f"{k}: {v.numel()}" for k, v in data.splits.items())
                    + ("; split by class" if by_class else "; split by image"))

    def deterministic(note: list[str]) -> None:
        again = info.cls().load(DataContext(data_root, cache_dir, opts))
        _require(torch.equal(again.images, data.images) and torch.equal(again.labels, data.labels)
                 and data.splits.keys() == again.splits.keys()
                 and all(torch.equal(data.splits[k], again.splits[k]) for k in data.splits),
                 "two loads give different images, labels or splits")
        note.append("two loads give identical tensors")

    b.run("images", images, needs=["load"])
    b.run("splits", splits, needs=["load"])
    b.run("deterministic", deterministic, needs=["load"])
    return ds if data is not None else None


def _check_generator(b: _Battery, info: PluginInfo, opts: dict[str, Any], digits: ImageSet,
                     cache_dir: Path) -> tuple[Any, bool]:
    cls = info.cls
    train = digits.split("train")
    shape = digits.image_shape
    no_tasks = not cls.gives_tasks

    def label_access(what: str, exc: AttributeError) -> None:
        if not cls.uses_labels and "label" in str(exc):
            raise Problem(f"{what} tried to read labels from the UnlabeledSplit it was given ({exc}); an "
                          "unsupervised generator sees images only (set uses_labels = True for a supervised "
                          "one)") from None

    def fresh(split: LabeledSplit) -> Any:
        gen = cls()
        try:
            gen.setup(split if cls.uses_labels else split.unlabeled(),
                      _context(derive_seed("check", info.name), shape, opts, cache_dir, dataset=digits.name))
        except AttributeError as exc:
            label_access("setup()", exc)
            raise
        return gen

    def sample(gen: Any, seed: int) -> EpisodeBatch:
        try:
            return gen.sample(TASKS, make_generator(seed))
        except AttributeError as exc:
            label_access("sample()", exc)
            raise

    def setup(note: list[str]) -> Any:
        gen = fresh(train)
        note.append("given a LabeledSplit (uses_labels = True)" if cls.uses_labels
                    else "given an UnlabeledSplit (images only)")
        return gen

    gen = b.run("setup", setup, needs=["contract"])
    if no_tasks:
        for name in ("sample", "deterministic", "label isolation"):
            b.results.append(CheckResult(name, None, "gives_tasks = False: the generator gives no tasks"))
        return gen, True

    def sampled(note: list[str]) -> EpisodeBatch:
        batch = sample(gen, 1)
        _require(isinstance(batch, EpisodeBatch), f"sample() must return an EpisodeBatch, got "
                                                  f"{type(batch).__name__}")
        batch.check(info.name, TASKS, WAYS, SHOTS, QUERIES, shape)
        _require(batch.ways == WAYS, f"batch.ways is {batch.ways}, the context asked for {WAYS}")
        for key in ("support_x", "query_x"):
            x = getattr(batch, key)
            _require(x.dtype == torch.float32, f"{key} must be float32, got {x.dtype}")
            _require(bool(torch.isfinite(x).all()) and float(x.min()) >= 0 and float(x.max()) <= 1,
                     f"{key} must hold finite values in [0, 1], got [{float(x.min()):g}, {float(x.max()):g}]")
        note.append(f"{TASKS} tasks {WAYS}-way {SHOTS}-shot {QUERIES}-query, float32 in [0, 1], int64 labels")
        return batch

    batch = b.run("sample", sampled, needs=["setup"])

    def deterministic(note: list[str]) -> None:
        _require(_same_batch(batch, sample(fresh(train), 1)),
                 "the same seeds gave different batches: draw every random choice from the torch.Generator "
                 "passed to sample() (and ctx.generator(...) in setup)")
        _require(not _same_batch(batch, sample(fresh(train), 2)),
                 "another torch.Generator seed gave the same batch: sample() ignores its generator")
        note.append("same seed -> same batch, other seed -> other batch")

    def isolation(note: list[str]) -> None:
        if cls.uses_labels:
            raise _Skip("supervised generator (uses_labels = True): sees labels by design")
        perm = train.labels[torch.randperm(train.labels.numel(), generator=torch.Generator().manual_seed(0))]
        _require(_same_batch(batch, sample(fresh(LabeledSplit(train.images, perm)), 1)),
                 "permuting the hidden labels changed the batches: an unsupervised generator must not "
                 "depend on labels")
        note.append("batches identical when the hidden labels are permuted")

    b.run("deterministic", deterministic, needs=["sample"])
    b.run("label isolation", isolation, needs=["sample"])
    return gen, False


def _check_algorithm(b: _Battery, info: PluginInfo, opts: dict[str, Any], digits: ImageSet,
                     cache_dir: Path) -> Any:
    cls = info.cls
    train, test = digits.split("train"), digits.split("test")
    shape = digits.image_shape
    sampler = EpisodeSampler(train.images, train.labels, WAYS, SHOTS, QUERIES)
    probe = EpisodeSampler(test.images, test.labels, WAYS, SHOTS, QUERIES).sample(3, make_generator(7))
    images = probe.query_x[0]

    def fresh() -> Any:
        alg = cls()
        alg.setup(_context(derive_seed("check", info.name), shape, opts, cache_dir, train.unlabeled(), digits.name))
        return alg

    def stream(episodes: torch.Generator) -> Iterator[EpisodeBatch]:
        while True:
            yield sampler.sample(TASKS, episodes)

    def trained() -> tuple[Any, list[float], Any, Any]:
        alg = fresh()
        losses = [float(x) for x in alg.meta_train(stream(make_generator(11)), Budget(2, TASKS))]
        logits = alg.predict(probe.support_x, probe.support_y, probe.query_x, WAYS)
        return alg, losses, logits, alg.embed(images)

    def setup(note: list[str]) -> Any:
        return fresh()

    def meta_train(note: list[str]) -> tuple[Any, list[float], Any, Any]:
        run = trained()
        _require(all(math.isfinite(x) for x in run[1]), f"non-finite meta-training loss in {run[1]}")
        note.append(f"losses {[round(x, 4) for x in run[1]]}" if run[1] else "no meta-training steps")
        return run

    alg = b.run("setup", setup, needs=["contract"])
    run = b.run("meta_train", meta_train, needs=["setup"])

    def predict(note: list[str]) -> None:
        logits, want = run[2], (3, WAYS * QUERIES, WAYS)
        _require(isinstance(logits, torch.Tensor), f"predict() must return a tensor, got "
                                                   f"{type(logits).__name__}")
        _require(tuple(logits.shape) == want, f"predict() must return logits of shape {want} "
                                              f"[tasks, N*Q, N], got {tuple(logits.shape)}")
        _require(logits.is_floating_point() and bool(torch.isfinite(logits).all()),
                 "predict() must return finite float logits")
        note.append(f"logits {want}")

    def embed(note: list[str]) -> None:
        z = run[3]
        _require(isinstance(z, torch.Tensor) and z.dim() == 2 and z.shape[0] == images.shape[0],
                 f"embed() must return features [{images.shape[0]}, D], got "
                 f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        _require(bool(torch.isfinite(z).all()), "embed() returned non-finite features")
        note.append(f"features {tuple(z.shape)}")

    def deterministic(note: list[str]) -> None:
        again = trained()
        _require(again[1] == run[1], f"the same seed gave other losses: {run[1]} vs {again[1]}; initialise "
                                     "from ctx.generator(...) / seeded(...) and draw nothing from the global "
                                     "RNG")
        _require(torch.equal(again[2], run[2]),
                 f"the same seed gave other logits (max difference {float((again[2] - run[2]).abs().max()):g})")
        _require(torch.equal(again[3], run[3]), "the same seed gave other embed() features")
        note.append("two runs under the same seed are bit-identical")

    def resumable(note: list[str]) -> None:
        if not getattr(cls, "resumable", False):
            raise _Skip("resumable = False: runs of it restart from step 0 instead of a checkpoint")
        first, episodes = fresh(), make_generator(11)
        buf = io.BytesIO()

        class Stop(Exception):
            pass

        def checkpoint_and_stop(step: int, loss: float) -> None:  # what the runner's checkpoints do
            torch.save(first.state_dict(), buf)
            raise Stop

        try:
            first.meta_train(stream(episodes), Budget(2, TASKS), on_step=checkpoint_and_stop)
        except Stop:
            pass
        _require(buf.tell() > 0, "meta_train never called on_step, so a run of it cannot be checkpointed")
        buf.seek(0)
        second = fresh()
        second.load_state_dict(torch.load(buf, weights_only=True))
        second.meta_train(stream(episodes), Budget(2, TASKS, start=1))
        logits = second.predict(probe.support_x, probe.support_y, probe.query_x, WAYS)
        _require(torch.equal(logits, run[2]),
                 "one step, state_dict() -> load_state_dict() into a fresh instance, one more step gave other "
                 "logits than two steps in one go: state_dict() misses some training state, or meta_train "
                 "ignores budget.start")
        note.append("stopped after step 1 and resumed from its state_dict: bit-identical to an unbroken run")

    def cluster(note: list[str]) -> None:
        if not cls.has_own_clustering():
            raise _Skip("no own clustering (cluster() not overridden): scored by k-means on embed() only")
        alg = run[0]
        x = torch.cat([probe.support_x, probe.query_x], 1)                  # [3, N*(K+Q), C, H, W]
        ids = alg.cluster(x, WAYS)
        want = tuple(x.shape[:2])
        _require(isinstance(ids, torch.Tensor) and tuple(ids.shape) == want and ids.dtype == torch.int64,
                 f"cluster() must return int64 cluster ids {want}, got "
                 f"{f'{ids.dtype} {tuple(ids.shape)}' if isinstance(ids, torch.Tensor) else type(ids).__name__}")
        _require(int(ids.min()) >= 0 and int(ids.max()) < WAYS, f"cluster() ids must lie in 0..{WAYS - 1}")
        _require(torch.equal(ids, alg.cluster(x, WAYS)), "cluster() gave other ids for the same images")
        note.append(f"cluster ids {want}, deterministic")

    b.run("predict", predict, needs=["meta_train"])
    b.run("embed", embed, needs=["meta_train"])
    b.run("cluster", cluster, needs=["meta_train"])
    b.run("deterministic", deterministic, needs=["predict", "embed"])
    b.run("resumable", resumable, needs=["deterministic"])
    return run[0] if run else alg


# --------------------------------------------------------------------------------------------- entry


def find_plugin(registry: Registry, name: str, kind: str | None = None) -> PluginInfo:
    """The plugin called ``name`` (of ``kind``, or of the only kind that has one)."""
    kinds = [kind] if kind else [k for k in KINDS if name in registry.plugins[k]]
    if not kinds:
        raise UnknownPluginError(f"no plugin named {name!r}")
    if len(kinds) > 1:
        raise UnknownPluginError(f"{name!r} is a plugin of several kinds ({', '.join(kinds)}): pass --kind")
    return registry.get(kinds[0], name)


def check_plugin(name: str, kind: str | None = None, *, plugins_dirs: Sequence[str | Path] = (),
                 options: dict[str, Any] | None = None, data_root: Path | None = None,
                 cache_dir: Path | None = None, isolated: bool = True, confine: bool = True,
                 in_reach: InReach | None = None) -> list[CheckResult]:
    """Run the conformance battery on plugin ``name``; see the module docstring for the checks.

    ``options``: the plugin's options for the checks and the smoke run (e.g. a smaller model); none given:
    the plugin's ``check_options``.
    ``isolated``: smoke-run in a fresh worker process (as the ``process`` and ``ray`` executors do).
    ``confine``: an outside task generator or algorithm (not the project's own) is never imported here:
    its checks run in a sandbox (:mod:`metabench.checks.confined_check`). ``in_reach``: see
    :func:`_check_sealed` (the sandboxed child's part; no stamp is written).
    """
    data_root = Path(data_root or default_data_root())
    cache_dir = Path(cache_dir or default_cache_dir())
    options = dict(options or {})
    plugins_dirs = [Path(d).resolve() for d in plugins_dirs]
    b = _Battery()
    registry = discover(plugins_dirs, confine=confine, hide=(data_root, cache_dir, Path("results").resolve()))

    def found(note: list[str]) -> PluginInfo:
        try:
            info = find_plugin(registry, name, kind)
        except UnknownPluginError as exc:
            failed = [f"{f.source}: {f.error}" for f in registry.failures]
            raise Problem(f"{exc}" + (f"; plugin sources that failed to load: {'; '.join(failed)}"
                                      if failed else "; is the package installed (pip install -e .) and "
                                                     "its entry point in group 'metabench'?")) from None
        note.append(f"{info.kind} from {info.origin}" + (f" {info.version}" if info.version else ""))
        return info

    info = b.run("found", found)
    if info is None:
        return b.results
    if not options:  # the plugin's own quick options, if it declares them
        options = dict(getattr(info.cls, "check_options", None) or {})
    if plugin_probe.is_stand_in(info.cls):  # an outside plugin: its code runs only in sandboxes
        return b.results + _check_confined(info, registry, options, plugins_dirs, data_root, cache_dir, isolated)
    opts = _check_contract(b, info, options)
    instance, no_tasks = None, False
    if opts is not None:
        if info.kind == "dataset":
            instance = _check_dataset(b, info, opts, data_root, cache_dir)
        else:
            digits = _reference_data(registry, data_root, cache_dir)
            if info.kind == "task_generator":
                instance, no_tasks = _check_generator(b, info, opts, digits, cache_dir)
            else:
                instance = _check_algorithm(b, info, opts, digits, cache_dir)
    _check_pickle(b, info.cls, instance)
    _check_smoke(b, info, registry, options, plugins_dirs, data_root, cache_dir, isolated, no_tasks)
    _check_sealed(b, info, registry, options, data_root, cache_dir, no_tasks, in_reach)
    if in_reach is None and SEALED in b.passed and not failures(b.results):  # `run` marks their records `checked`
        path = check_stamps.write_stamp(cache_dir, info.kind, info.name, info.cls)
        b.results.append(CheckResult("stamp", True, f"passed at this code: {path.name}"))
    return b.results


def failures(results: Sequence[CheckResult]) -> list[CheckResult]:
    """The checks that failed."""
    return [r for r in results if r.ok is False]


# ------------------------------------------------------------------------------------- outside plugins


def _check_confined(info: PluginInfo, registry: Registry, options: dict[str, Any], plugins_dirs: list[Path],
                   data_root: Path, cache_dir: Path, isolated: bool) -> list[CheckResult]:
    """The battery for stand-in ``info`` (after "found"): the sealed half here, the rest in a sandbox."""
    reference, files = sandbox.opened_files(lambda: _reference_data(registry, data_root, cache_dir))
    data = secret_dataset(reference.name, reference.image_shape)
    no_tasks = info.kind == "task_generator" and not info.cls.gives_tasks
    suite = smoke_suite(registry, info.kind, info.name, options, no_tasks)
    sealed_record, sealed_problem = secret_run(suite, registry, data, files, data_root, cache_dir, seal=True)
    # the in-reach half only after the sealed one passed, as in an unconfined check
    child_results, here = _confined_child(info, options, plugins_dirs, isolated, [data_root, cache_dir],
                                          None if sealed_problem else (data, suite))
    results = [r for r in child_results if r.check not in ("found", SEALED)]
    in_reach = next((r for r in child_results if r.check == SEALED), None)
    note: list[str] = []
    if sealed_problem:
        results.append(CheckResult(SEALED, False, sealed_problem))
    elif in_reach is None or in_reach.ok is not True or here is None:
        results.append(in_reach._replace(check=SEALED) if in_reach is not None and in_reach.ok is not True
                       else CheckResult(SEALED, False, "the run in reach of the labels gave no numbers"))
    else:
        problem = compare(numbers(sealed_record), here, note)
        results.append(CheckResult(SEALED, problem is None, problem or "; ".join(note)))
    if results[-1].ok and not failures(results):
        path = check_stamps.write_stamp(cache_dir, info.kind, info.name, info.cls)
        results.append(CheckResult("stamp", True, f"passed at this code: {path.name}"))
    return results


def _confined_child(info: PluginInfo, options: dict[str, Any], plugins_dirs: list[Path], isolated: bool,
           hidden: list[Path], secret: tuple[ImageSet, dict[str, Any]] | None
           ) -> tuple[list[CheckResult], list[Any] | None]:
    """Run the unconfined battery in a sandboxed child; its results and in-reach numbers (None: none). The
    child uses this process's torch threads: CPU reductions depend on them, and its in-reach numbers must
    match the sealed run's bit for bit."""
    with sandbox.Scratch("metabench-confined-check-") as scratch:
        work = scratch.work
        (work / "cache").mkdir()
        args = {"name": info.name, "kind": info.kind, "options": options, "isolated": isolated,
                "plugins_dirs": [str(d) for d in plugins_dirs], "data_root": str(hidden[0]),
                "suite": secret[1] if secret else None, "threads": torch.get_num_threads()}
        (work / "args.json").write_text(json.dumps(args))
        if secret is not None:
            d = secret[0]
            torch.save({"name": d.name, "images": d.images, "labels": d.labels, "train": d.splits["train"],
                        "test": d.splits["test"]}, work / "secret.pt")
        cmd = scratch.command([sys.executable, "-m", "metabench.checks.confined_check", str(work)],
                              hidden_dirs=[*hidden, default_data_root(), default_cache_dir(),
                                           Path("results").resolve()])
        env = scratch.env()
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=_CONFINED_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return [CheckResult("confined checks", False, f"did not finish in {_CONFINED_TIMEOUT_S} s")], None
        try:
            out = json.loads((work / "out.json").read_text())
            results = [CheckResult(str(c), None if ok is None else bool(ok), str(m)) for c, ok, m in out["results"]]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            tail = done.stderr.decode(errors="replace").strip()[-400:]
            return [CheckResult("confined checks", False, f"the sandboxed checks gave no report ({exc}; exit "
                                f"code {done.returncode}){': ' + tail if tail else ''}")], None
    return results, out.get("numbers")
