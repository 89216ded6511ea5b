"""One run, from its identity to its ``ok`` record: dataset -> task generator -> algorithm -> evaluation.

:meth:`SuiteRunner.execute` runs one :class:`~metabench.engine.suite.RunSpec` in this process and returns
its record, or raises :class:`RunFailure` naming the plugin stage that failed (a plugin raised, returned
garbage or a non-finite loss, a dataset is missing). Deciding whether to run at all, writing the record
and turning a failure into a ``failed`` record are :mod:`metabench.execution`'s job.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import metabench
from metabench.engine import checkpoint, check_stamps, environment, memory, models, provenance, sandbox, sealed
from metabench.contracts import (Budget, DataContext, EpisodeBatch, ImageSet, LabeledSplit, PluginError,
                                 RunContext, TaskGenerator)
from metabench.engine.clustering import cluster_tasks, score_tasks
from metabench.engine.plugin_probe import is_stand_in
from metabench.engine.evaluation import cluster_own, embed_tasks, evaluate, fixed_episode_indices, mean_ci95
from metabench.engine.paths import default_cache_dir, default_data_root
from metabench.engine.progress import progress
from metabench.engine.records import SCHEMA_VERSION
from metabench.engine.registry import Registry
from metabench.seeding import derive_seed, make_generator
from metabench.engine.suite import RunSpec, Suite, TestShape, plugin_name
from metabench.engine.training import Stage, sync, task_stream


class RunFailure(Exception):
    """A run failed inside ``plugin`` (``kind:name``, None: in the core); ``__cause__`` is the error."""

    def __init__(self, plugin: str | None, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.plugin = plugin


@dataclass
class Settings:
    """Where a suite reads and writes, and on what device it runs."""

    results: Path
    data_root: Path
    cache_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    force: bool = False
    checkpoint_every: float | None = 600.0  # seconds between mid-run checkpoints; 0: every step; None: never
    save_models: bool = False  # keep each run's trained model beside its record (:mod:`metabench.engine.models`)
    seal: bool | None = None  # meta-train in a sealed worker (:mod:`metabench.engine.sealed`); None: unsupervised runs
    hide: tuple[Path, ...] = ()  # more folders a sealed worker must not see (besides data root, cache, results)


_sync, _Stage = sync, Stage  # their home is metabench.engine.training


def _checkpoint_identity(spec: RunSpec, device: torch.device, plugins: tuple[type, ...]) -> dict[str, Any]:
    """What a checkpoint must have been written under to be resumed: configuration, versions, code, device
    and thread count."""
    return {"config": spec.config(), "metabench": metabench.__version__, "torch": str(torch.__version__),
            "code": checkpoint.code_fingerprint(*plugins), "device": str(device), "threads": torch.get_num_threads()}


class _Resume:
    """A run's mid-run checkpoints (:mod:`metabench.engine.checkpoint`): on creation, restores the algorithm, the
    episode generator and torch's RNGs from a matching checkpoint (``start`` > 0 then); :meth:`after_step`
    writes one every ``settings.checkpoint_every`` seconds. Only for ``resumable`` algorithms."""

    def __init__(self, runner: "SuiteRunner", spec: RunSpec, algorithm: Any, episode_gen: torch.Generator,
                 checked: dict[str, int], plugins: tuple[type, ...]) -> None:
        s = runner.settings
        self.algorithm, self.episode_gen, self.checked, self.device = algorithm, episode_gen, checked, s.device
        self.every = s.checkpoint_every if getattr(algorithm, "resumable", False) else None
        self.path = checkpoint.checkpoint_path(runner.out_dir, spec.run_id)
        self.start, self.train_s, self.last = 0, 0.0, time.monotonic()
        self.prior_losses: list[float] = []  # from the checkpoint
        self.losses: list[float] = []  # every loss so far, for the next checkpoint
        if self.every is None:
            return
        self.identity = _checkpoint_identity(spec, s.device, plugins)
        if s.force:
            checkpoint.remove(self.path)
            return
        saved = checkpoint.load(self.path, self.identity)
        if saved is not None:
            algorithm.load_state_dict(saved["algorithm"])
            episode_gen.set_state(saved["episode_gen"])
            checkpoint.set_rng_state(saved["rng"], s.device)
            self.start, self.prior_losses, self.train_s = saved["step"], list(saved["losses"]), saved["train_s"]
            checked["tasks"] = saved["tasks"]
            self.losses = list(self.prior_losses)

    def after_step(self, step: int, loss: float, t0: float) -> None:
        """Note the loss; write a checkpoint if one is due."""
        if self.every is None:
            return
        self.losses.append(loss)
        if time.monotonic() - self.last < self.every:
            return
        _sync(self.device)
        checkpoint.save(self.path, {
            "identity": self.identity, "step": step + 1, "losses": list(self.losses),
            "train_s": self.train_s + time.perf_counter() - t0, "tasks": self.checked["tasks"],
            "algorithm": self.algorithm.state_dict(), "episode_gen": self.episode_gen.get_state(),
            "rng": checkpoint.rng_state(self.device)})
        self.last = time.monotonic()


class SuiteRunner:
    """Executes the runs of a suite in this process, one after another."""

    def __init__(self, suite: Suite, registry: Registry, settings: Settings) -> None:
        self.suite, self.registry, self.settings = suite, registry, settings
        self.out_dir = settings.results / suite.name
        self._datasets: dict[str, ImageSet] = {}
        self._data_files: list[str] = []  # the files the dataset in memory was read from: hidden from sealed workers
        self._worker: sealed.SealedWorker | None = None  # the sealed worker of the run in progress
        # today's data and code digests: a record's provenance, and whether an existing record is stale
        self.fingerprints = provenance.Fingerprints(registry, self._dataset)
        self.on_stage: Callable[[str], None] | None = None  # told "kind:name" of each plugin stage entered
        environment.git_commit()  # pin the source commit now, before anything can change the tree

    def runs(self, only: tuple[str, ...] | list[str] = ()) -> list[RunSpec]:
        """The suite's runs (:meth:`Suite.runs`), algorithms that declare ``trains_per_way`` trained once
        per test way count."""
        def per_way(alg: str) -> bool:
            try:
                return bool(self.registry.get("algorithm", plugin_name(alg)).cls.trains_per_way)
            except Exception:  # an unknown plugin fails its runs later, with a clear message
                return False
        return self.suite.runs(only, trains_per_way=per_way)

    def record_path(self, spec: RunSpec) -> Path:
        """Where the record of ``spec`` lives."""
        return self.out_dir / f"{spec.run_id}.json"

    def execute(self, spec: RunSpec, label: str = "") -> dict[str, Any]:
        """Run ``spec`` here and return its ``ok`` record (not written); :class:`RunFailure` if it fails."""
        stage = _Stage(self.on_stage)
        try:
            return self._execute(spec, stage, label)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # blame the plugin stage it happened in (in a sealed worker: the worker's)
            raise RunFailure(getattr(exc, "plugin", None) or stage.plugin, exc) from exc
        finally:
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    # ----------------------------------------------------------------------------------- internals

    def _dataset(self, name: str, options: dict[str, Any]) -> ImageSet:
        key = f"{name}:{sorted(options.items())}"
        if key not in self._datasets:
            self._datasets.clear()  # keep one dataset in memory at a time
            ds = self.registry.get("dataset", plugin_name(name)).cls()
            data, self._data_files = sandbox.opened_files(
                lambda: ds.load(DataContext(self.settings.data_root, self.settings.cache_dir, options)))
            if not isinstance(data, ImageSet):
                raise PluginError(f"{name}: load() must return an ImageSet, got {type(data).__name__}")
            self.fingerprints.note(name, options, data)  # the record's data digest, while the tensors are here
            self._datasets[key] = data
        return self._datasets[key]

    def _execute(self, spec: RunSpec, stage: _Stage, label: str) -> dict[str, Any]:
        dev = self.settings.device
        p, b = spec.protocol, spec.budget
        wall0 = time.perf_counter()
        memory.reset_peak(dev)
        ds_info, ds_opts = self.registry.resolve("dataset", spec.dataset, spec.options.get(spec.dataset))
        gen_info, gen_opts = self.registry.resolve("task_generator", spec.task_generator,
                                                   spec.options.get(spec.task_generator))
        alg_info, alg_opts = self.registry.resolve("algorithm", spec.algorithm, spec.options.get(spec.algorithm))

        with stage(f"dataset:{spec.dataset}"):
            data = self._dataset(spec.dataset, ds_opts)
            train = data.split("train").to(dev)

        desc = f"{label} {spec.run_id.rsplit('__', 1)[0]}"
        plugins = (ds_info.cls, gen_info.cls, alg_info.cls)
        is_sealed = sealed.wanted(self.settings.seal, bool(gen_info.cls.uses_labels),
                                  confined=is_stand_in(gen_info.cls) or is_stand_in(alg_info.cls))
        train_fn = self._train_sealed if is_sealed else self._train_here
        algorithm, actx, losses, tasks, train_s, start = train_fn(spec, data, train, stage, plugins,
                                                                  (gen_opts, alg_opts), desc)

        test, test_opts = self._test_split(spec, data, stage)
        evaluations = [self._evaluate(spec, t, algorithm, test, stage, desc) for t in p.tests]
        eval_s = sum(e["speed"]["eval_s"] for e in evaluations)
        config = spec.config()
        config["options"] = {spec.dataset: ds_opts, spec.task_generator: gen_opts, spec.algorithm: alg_opts,
                             **({spec.test_dataset: test_opts} if spec.test_dataset != spec.dataset else {})}
        saved = {}
        if self.settings.save_models:
            with stage(f"algorithm:{spec.algorithm}"):
                path = models.model_path(self.out_dir, spec.run_id)
                code = checkpoint.code_fingerprint(ds_info.cls, gen_info.cls, alg_info.cls)
                digest = models.save_model(path, spec.run_id, config, code, actx, algorithm)
            saved = {"model": {"file": path.name, "sha256": digest, "code": code}}
        return {**saved,
            "schema_version": SCHEMA_VERSION,
            "run_id": spec.run_id,
            "status": "ok",
            "config": config,
            "final_train_loss": losses[-1] if losses else None,
            "evaluations": evaluations,
            "speed": {"meta_train_tasks_per_s": tasks / train_s if tasks else None,
                      "meta_train_tasks": tasks,
                      "eval_tasks_per_s": (len(evaluations) * b.test_episodes / eval_s) if eval_s > 0 else None,
                      "meta_train_s": train_s, "eval_s": eval_s,
                      "wall_s": time.perf_counter() - wall0, **self._peak_memory(dev),
                      **({"resumed_from_step": start} if start else {})},
            "environment": environment.describe(dev),
            "provenance": self.fingerprints.current(config),  # the data digest: once per dataset load
            "isolation": check_stamps.isolation(is_sealed, self.settings.cache_dir,
                                                [("task_generator", gen_info.name, gen_info.cls),
                                                 ("algorithm", alg_info.name, alg_info.cls)]),
        }

    def _peak_memory(self, dev: torch.device) -> dict[str, float]:
        """``peak_mem_mb`` of the run: this process's peak, plus the sealed worker's when there is one (the two
        live side by side, so their sum bounds what the run needs), each also given on its own."""
        here = memory.peak_mb(dev)
        if self._worker is None:
            return {"peak_mem_mb": here}
        worker = float(self._worker.request("peak_mem", str(dev)))
        return {"peak_mem_mb": here + worker, "supervisor_peak_mem_mb": here, "worker_peak_mem_mb": worker}

    def _train_here(self, spec: RunSpec, data: ImageSet, train: LabeledSplit, stage: _Stage,
                    plugins: tuple[type, ...], opts: tuple[dict, dict], desc: str) -> tuple:
        """Set up and meta-train the run's task generator and algorithm in this process; returns the
        algorithm, its context, the losses, the tasks drawn, the training seconds and the step it started at."""
        dev, p, b = self.settings.device, spec.protocol, spec.budget
        ds_cls, gen_cls, alg_cls = plugins
        gen_opts, alg_opts = opts
        with stage(f"task_generator:{spec.task_generator}"):
            generator: TaskGenerator = gen_cls()
            gctx = RunContext(dev, derive_seed(spec.run_seed, "task_generator"), p.train_ways, p.train_shots,
                              p.train_queries, data.image_shape, gen_opts, self.settings.cache_dir,
                              dataset=data.name, augmentation=ds_cls.augmentation)
            generator.setup(train if generator.uses_labels else train.unlabeled(), gctx)

        with stage(f"algorithm:{spec.algorithm}"):
            algorithm = alg_cls()
            actx = RunContext(dev, derive_seed(spec.run_seed, "algorithm"), p.train_ways, p.train_shots,
                              p.train_queries, data.image_shape, alg_opts, self.settings.cache_dir,
                              unlabeled=train.unlabeled(), dataset=data.name,
                              augmentation=ds_cls.augmentation)
            algorithm.setup(actx)

        episode_gen = make_generator(derive_seed(spec.run_seed, "train-episodes"), dev)
        checked = {"n": 0, "tasks": 0}
        resume = _Resume(self, spec, algorithm, episode_gen, checked, plugins)

        def stream() -> Iterator[EpisodeBatch]:
            return task_stream(generator, spec.task_generator, spec.algorithm, b.meta_batch,
                               (p.train_ways, p.train_shots, p.train_queries), data.image_shape, episode_gen,
                               stage, checked)

        with progress(total=b.steps, initial=resume.start, desc=f"{desc} train", unit="step") as bar:
            _sync(dev)
            t0 = time.perf_counter()

            def on_step(step: int, loss: float) -> None:
                bar.update(1)
                resume.after_step(step, loss, t0)

            with stage(f"algorithm:{spec.algorithm}"):
                budget = Budget(b.steps, b.meta_batch, resume.start)
                losses = resume.prior_losses + algorithm.meta_train(stream(), budget, on_step=on_step)
            _sync(dev)
            train_s = resume.train_s + time.perf_counter() - t0

        return algorithm, actx, losses, checked["tasks"], train_s, resume.start

    def _train_sealed(self, spec: RunSpec, data: ImageSet, train: LabeledSplit, stage: _Stage,
                      plugins: tuple[type, ...], opts: tuple[dict, dict], desc: str) -> tuple:
        """:meth:`_train_here` in a sealed worker (:mod:`metabench.engine.sealed`) that sees the training
        images (their labels only for a supervised generator) and nothing of the data root, the cache or the
        results; it stays up to serve the evaluation, whose ``algorithm`` is its stand-in."""
        s, p, b = self.settings, spec.protocol, spec.budget
        ds_cls, gen_cls, alg_cls = plugins
        gen_opts, alg_opts = opts
        uses_labels = bool(gen_cls.uses_labels)
        with stage(f"task_generator:{spec.task_generator}"):
            cache = s.cache_dir / sealed.PLUGIN_CACHE[uses_labels]
            s.results.mkdir(parents=True, exist_ok=True)  # hidden folders must exist before the worker starts
            self._worker = worker = sealed.SealedWorker(
                # the default data root and cache too: a run given other folders must not find the usual ones
                hidden_dirs=[s.data_root, s.cache_dir, s.results, default_data_root().resolve(), default_cache_dir(),
                             *s.hide], hidden_files=self._data_files,
                plugin_cache=cache, device=s.device)
        worker.on_stage = stage
        every = s.checkpoint_every if getattr(alg_cls, "resumable", False) else None
        path, saved = checkpoint.checkpoint_path(self.out_dir, spec.run_id), None
        identity = _checkpoint_identity(spec, s.device, plugins) if every is not None else None
        if every is not None:
            if s.force:
                checkpoint.remove(path)
            else:
                saved = checkpoint.load(path, identity)
        shape = [p.train_ways, p.train_shots, p.train_queries]
        message = {
            "threads": torch.get_num_threads(), "device": str(s.device), "plugins_dirs": list(self.registry.plugins_dirs),
            "generator": {"entry": spec.task_generator, "options": gen_opts, "shape": shape,
                          "seed": derive_seed(spec.run_seed, "task_generator")},
            "algorithm": {"entry": spec.algorithm, "options": alg_opts, "shape": shape,
                          "seed": derive_seed(spec.run_seed, "algorithm")},
            "image_shape": list(data.image_shape), "dataset": data.name, "augmentation": ds_cls.augmentation,
            "images": train.images, "labels": train.labels if uses_labels else None,
            "meta_batch": b.meta_batch, "steps": b.steps, "episode_seed": derive_seed(spec.run_seed, "train-episodes"),
            "cache_dir": str(cache), "checkpoint_every": every, "resume": saved}
        with progress(total=b.steps, desc=f"{desc} train (sealed)", unit="step") as bar, \
                stage(f"task_generator:{spec.task_generator}"):
            done = sealed.train_sealed(worker, message, lambda state: checkpoint.save(path, {"identity": identity,
                                                                                           **state}))
            bar.update(b.steps)
        actx = RunContext(s.device, derive_seed(spec.run_seed, "algorithm"), *shape, data.image_shape, alg_opts,
                          s.cache_dir, dataset=data.name, augmentation=ds_cls.augmentation)
        return (sealed.WorkerAlgorithm(worker, alg_cls), actx, done.losses, done.tasks, done.train_s,
                done.start)

    def _test_split(self, spec: RunSpec, data: ImageSet, stage: _Stage) -> tuple[LabeledSplit, dict[str, Any]]:
        """The split the run is scored on and its dataset's options: the run's dataset's ``test`` split, or, for
        a cross-domain protocol (``test_dataset``), that dataset's, whose images must have the same shape."""
        if spec.test_dataset == spec.dataset:
            with stage(f"dataset:{spec.dataset}"):
                return data.split("test").to(self.settings.device), {}
        _, opts = self.registry.resolve("dataset", spec.test_dataset, spec.options.get(spec.test_dataset))
        with stage(f"dataset:{spec.test_dataset}"):
            other = self._dataset(spec.test_dataset, opts)
            if other.image_shape != data.image_shape:
                raise PluginError(f"{spec.test_dataset}: images {other.image_shape} cannot test a model trained on "
                                  f"{spec.dataset}'s {data.image_shape}; set its options (e.g. size) to match")
            return other.split("test").to(self.settings.device), opts

    def _evaluate(self, spec: RunSpec, t: TestShape, algorithm: Any, test: LabeledSplit, stage: _Stage,
                  desc: str) -> dict[str, Any]:
        """One evaluation of the trained ``algorithm``: accuracy on the fixed episodes of test protocol ``t``
        (they depend only on dataset, protocol and seed) and the clustering scores of the first
        ``cluster_tasks`` of them; the record's ``evaluations`` entry."""
        b, dev = spec.budget, self.settings.device
        seed = spec.test_seed(t)
        with stage("dataset:" + spec.dataset):
            indices = fixed_episode_indices(test, t.ways, t.shots, t.queries, b.test_episodes, seed)
        with progress(total=b.test_episodes, desc=f"{desc} eval {t.tag}", unit="task") as bar, \
                stage(f"algorithm:{spec.algorithm}"):
            _sync(dev)
            t0 = time.perf_counter()
            accs = evaluate(algorithm, test, indices, t.shots, b.eval_batch, on_batch=bar.update)
            _sync(dev)
            eval_s = time.perf_counter() - t0
        mean, ci = mean_ci95(accs)
        clustering: dict[str, Any] = {}
        if b.cluster_tasks:
            with stage(f"algorithm:{spec.algorithm}"):
                sub = indices[:b.cluster_tasks]
                feats = embed_tasks(algorithm, test, sub, b.eval_batch)
            classes = torch.arange(t.ways).repeat_interleave(sub.shape[2]).expand(sub.shape[0], -1)
            scores = cluster_tasks(feats, classes, t.ways, derive_seed(seed, "kmeans"))
            for j, key in enumerate(("nmi", "ari", "cluster_acc")):
                clustering[key], clustering[f"{key}_ci95"] = mean_ci95(scores[:, j])
            clustering["cluster_tasks"] = int(sub.shape[0])
            if algorithm.has_own_clustering():  # a meta-learned clusterer, scored beside k-means
                with stage(f"algorithm:{spec.algorithm}"):
                    own = score_tasks(cluster_own(algorithm, test, sub, t.ways, b.eval_batch), classes)
                for j, key in enumerate(("own_nmi", "own_ari", "own_cluster_acc")):
                    clustering[key], clustering[f"{key}_ci95"] = mean_ci95(own[:, j])
        return {"ways": t.ways, "shots": t.shots, "queries": t.queries,
                "metrics": {"accuracy_mean": mean, "accuracy_ci95": ci, "test_episodes": int(accs.numel()),
                            # per-episode correct query counts: paired comparisons on the same episodes
                            "episode_correct": [round(a * t.ways * t.queries) for a in accs.tolist()],
                            "episode_queries": t.ways * t.queries, **clustering},
                "speed": {"eval_s": eval_s, "eval_tasks_per_s": b.test_episodes / eval_s if eval_s > 0 else None}}
