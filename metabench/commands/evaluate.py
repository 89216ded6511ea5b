"""``metabench evaluate MODEL``: score a kept model (``run --save-models``) on given episodes, or again on
its own test protocols, and export those episodes for others."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

from metabench.commands.common import device, plugins_parent, registry
from metabench.engine.paths import default_cache_dir, default_data_root


def _test_split(reg, c: dict, scored: str, data, data_root: Path, cache_dir: Path):
    """The test split the record was scored on: the model's dataset's, or a cross-domain run's test dataset's
    (loaded with the options the record names)."""
    from metabench.contracts import DataContext

    if scored == c["dataset"]:
        return data.split("test")
    info, opts = reg.resolve("dataset", scored, c["options"].get(scored))
    return info.cls().load(DataContext(data_root, cache_dir, opts)).split("test")


def main(args: argparse.Namespace) -> int:
    """Load the model, its dataset and what is to be scored; rebuild its algorithm (in a sealed worker unless
    ``--no-seal``); score the episodes; print (or ``--json``) the result."""
    from metabench.contracts import DataContext, PluginError
    from metabench.engine import sandbox
    from metabench.engine.episode_sets import EpisodeSetError, inspect_episodes, load_episodes
    from metabench.engine.models import ModelError, load_model
    from metabench.engine.registry import UnknownPluginError

    try:
        model = load_model(args.model)
    except ModelError as exc:
        print(f"metabench: error: {exc}", file=sys.stderr)
        return 2
    data_root = Path(args.data_root or default_data_root())
    cache_dir = Path(args.cache_dir or default_cache_dir())
    hidden, hidden_files = [data_root, cache_dir], []
    folder = model.path.parent.resolve()   # the records: hidden, or only the model's own files where it
    if _holds_code(folder):                # holds metabench's code or the working folder (a worker needs them)
        hidden_files += [str(model.path.resolve()), str(_record_path(model.path).resolve())]
    else:
        hidden.append(folder)
    given = Path(args.episodes).resolve() if args.episodes else None  # a file, or a folder of episodes
    if given is not None:
        (hidden if given.is_dir() and not _holds_code(given) else hidden_files).append(given)
    # outside plugins are imported in a sandbox only, unless the user trusts them with --no-seal
    reg = registry(args, confine=args.seal is not False, hide=tuple(hidden))
    dev = device(args.device)
    c = model.config
    try:
        ds_info, ds_opts = reg.resolve("dataset", c["dataset"], c["options"].get(c["dataset"]))
        alg_info, _ = reg.resolve("algorithm", c["algorithm"], None)
        ds = ds_info.cls()
        data, files = sandbox.opened_files(lambda: ds.load(DataContext(data_root, cache_dir, ds_opts)))
        train = data.split("train").to(dev)
    except (UnknownPluginError, PluginError, FileNotFoundError, RuntimeError, KeyError) as exc:
        print(f"metabench: error: cannot rebuild the model of {model.path}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 2
    if model.code != _code(ds_info.cls, alg_info.cls, reg, c):
        print(f"metabench: warning: {model.path} was trained by other code than is installed now (code digest "
              "differs); scoring it with today's plugins", file=sys.stderr)
    try:  # everything the scoring reads is read before the worker starts, so that the worker sees none of it
        if args.episodes:
            info = inspect_episodes(args.episodes)
            split = data.split(info.split).to(dev) if info.needs_split else None
            episodes, more = sandbox.opened_files(lambda: load_episodes(
                args.episodes, split=split, prepare=lambda im: ds.prepare_image(im, ds_opts)))
            jobs = ("episodes", episodes)
        else:
            scored = c.get("test_dataset") or c["dataset"]  # a cross-domain run is scored on another dataset
            test, more = sandbox.opened_files(lambda: _test_split(reg, c, scored, data, data_root, cache_dir))
            jobs = ("protocols", (scored, test.to(dev)))
    except (EpisodeSetError, PluginError, UnknownPluginError, FileNotFoundError) as exc:
        print(f"metabench: error: {exc}", file=sys.stderr)
        return 2
    try:
        files = [*files, *more, *map(str, hidden_files)]
        with _threads(args, model.path), \
                _algorithm(args, model, reg, alg_info.cls, dev, cache_dir, train, hidden, files) as algorithm:
            results, was_sealed = _score(args, model, algorithm, jobs, dev), _is_sealed(algorithm)
    except (EpisodeSetError, PluginError, UnknownPluginError, FileNotFoundError, RuntimeError, KeyError) as exc:
        blame = f" (plugin {exc.plugin})" if getattr(exc, "plugin", None) else ""
        print(f"metabench: error: {model.path}{blame}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": str(model.path), "run_id": model.run_id, "sealed": was_sealed,
                          "results": results}, indent=2))
    else:
        for r in results:
            where = r.get("protocol") or r["episodes"]
            match = {True: "  (identical to the record)", False: "  (DIFFERS from the record)"}.get(
                r.get("matches_record"), "")
            print(f"{model.run_id}: {where}: {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_ci95']:.2f}% "
                  f"on {r['count']} episodes{match}")
    return 1 if any(r.get("matches_record") is False for r in results) else 0


def _is_sealed(algorithm) -> bool:
    """Whether ``algorithm`` answers from a sealed worker."""
    from metabench.engine.sealed import WorkerAlgorithm

    return isinstance(algorithm, WorkerAlgorithm)


@contextlib.contextmanager
def _threads(args, model_file: Path):
    """Score with ``--threads`` torch threads, else with those of the run whose record lies beside the model
    (CPU reductions depend on the thread count: the same count scores the record's episodes bit for bit on
    another machine), else with this process's; the count is restored afterwards."""
    record = _record_beside(model_file)
    want = args.threads or (record or {}).get("environment", {}).get("threads")
    before = torch.get_num_threads()
    if want and int(want) != before:
        print(f"metabench: scoring with {int(want)} torch threads"
              + ("" if args.threads else " as the run's record was made"), file=sys.stderr)
        torch.set_num_threads(int(want))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _algorithm(args, model, reg, alg_cls, dev, cache_dir: Path, train, hidden: list[Path], files: list[str]):
    """The model's trained algorithm: set up in a sealed worker that sees the meta-training images and
    nothing of the data, the cache, the model's folder or the episodes (the default where the kernel allows;
    a plugin discovered in a sandbox always), or in this process with ``--no-seal``."""
    from metabench.engine import plugin_probe, sealed
    from metabench.engine.models import rebuild
    from metabench.names import base_name

    if not sealed.wanted(args.seal, False, confined=plugin_probe.is_stand_in(alg_cls)):
        yield rebuild(model, alg_cls, dev, cache_dir, unlabeled=train.unlabeled())
        return
    gen = reg.get("task_generator", base_name(model.config["task_generator"])).cls
    plugin_cache = cache_dir / sealed.PLUGIN_CACHE[bool(gen.uses_labels)]
    worker = sealed.SealedWorker(hidden_dirs=[*hidden, default_data_root().resolve(), default_cache_dir()],
                                 hidden_files=files, plugin_cache=plugin_cache, device=dev)
    try:
        sealed.train_sealed(worker, {
            "threads": torch.get_num_threads(), "device": str(dev), "plugins_dirs": list(reg.plugins_dirs),
            "algorithm": {"entry": model.config["algorithm"]}, "images": train.images,
            "cache_dir": str(plugin_cache), "restore": {"context": model.context, "state": model.state}})
        yield sealed.WorkerAlgorithm(worker, alg_cls)
    finally:
        worker.close()


def _score(args, model, algorithm, jobs, dev) -> list[dict]:
    """Score ``algorithm`` on the given episodes, or on the model's own test protocols (compared with the
    record beside the model, episode by episode)."""
    from metabench.engine.episode_sets import write_index_episodes
    from metabench.engine.evaluation import evaluate, evaluate_episodes, fixed_episode_indices, mean_ci95
    from metabench.engine.suite import episode_seed, test_shapes

    c = model.config
    batch = int(c["budget"].get("eval_batch", 50))
    kind, what = jobs
    if kind == "episodes":
        accs = evaluate_episodes(algorithm, what, batch, dev)
        mean, ci = mean_ci95(accs)
        return [{"episodes": str(args.episodes), "count": len(what), "accuracy_mean": mean,
                 "accuracy_ci95": ci, "episode_accuracy": accs.tolist()}]
    scored, test = what
    record = _record_beside(model.path)
    results = []
    for i, t in enumerate(test_shapes(c)):
        idx = fixed_episode_indices(test, t.ways, t.shots, t.queries, c["budget"]["test_episodes"],
                                    episode_seed(scored, t, c["seed"]))
        if args.export_episodes:
            out = Path(args.export_episodes) / f"{scored}-{t.tag}-seed{c['seed']}.json"
            write_index_episodes(out, idx, t.shots, None, scored, "test")
            print(f"metabench: wrote {out}", file=sys.stderr)
        accs = evaluate(algorithm, test, idx, t.shots, batch)
        mean, ci = mean_ci95(accs)
        correct = [round(a * t.ways * t.queries) for a in accs.tolist()]
        row = {"protocol": t.tag, "count": len(correct), "accuracy_mean": mean, "accuracy_ci95": ci}
        if record is not None and i < len(record["evaluations"]):
            row["matches_record"] = record["evaluations"][i]["metrics"]["episode_correct"] == correct
        results.append(row)
    return results


def _code(ds_cls, alg_cls, reg, config) -> str:
    """The code digest of the installed plugins of the model's run ('' when one is gone)."""
    from metabench.engine.checkpoint import code_fingerprint
    from metabench.names import base_name

    try:
        gen_cls = reg.get("task_generator", base_name(config["task_generator"])).cls
    except Exception:
        return ""
    return code_fingerprint(ds_cls, gen_cls, alg_cls)


def _holds_code(folder: Path) -> bool:
    """Whether ``folder`` holds metabench's own code or the working folder (it cannot be hidden from a worker)."""
    import metabench

    core = Path(metabench.__file__).resolve().parent
    return core.is_relative_to(folder) or Path.cwd().resolve().is_relative_to(folder)


def _record_path(model_file: Path) -> Path:
    """Where the record of a model's run lies: beside the model."""
    return model_file.with_name(model_file.name.removesuffix(".model.pt") + ".json")


def _record_beside(model_file: Path):
    """The valid record of the model's run in the model's folder, if there is one."""
    from metabench.engine.records import RecordError, read_record

    path = _record_path(model_file)
    try:
        return read_record(path) if path.exists() else None
    except RecordError:
        return None


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the command on ``sub``."""
    ev = sub.add_parser("evaluate", parents=[plugins_parent()],
                        help="score a kept model on given episodes (or again on its own test protocols)")
    ev.add_argument("model", help="a model file written by metabench run --save-models (<run id>.model.pt)")
    ev.add_argument("--episodes", metavar="FILE|DIR",
                    help="an episode set: a JSON file or a folder of <episode>/support|query/<class>/*.png "
                         "(format: metabench/engine/episode_sets.py); default: the model's own test protocols, "
                         "compared episode by episode with its record when the record lies beside it")
    ev.add_argument("--export-episodes", metavar="DIR",
                    help="without --episodes: also write the model's own test episodes as JSON episode sets")
    ev.add_argument("--data-root", help="data root of the model's dataset (default $METABENCH_DATA or ./data)")
    ev.add_argument("--cache-dir", help="decoded-tensor cache (default $METABENCH_CACHE or ~/.cache/metabench)")
    ev.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ev.add_argument("--threads", type=int, metavar="T",
                    help="torch threads for scoring (default: those the run's record beside the model names, else "
                         "this machine's default)")
    ev.add_argument("--seal", action=argparse.BooleanOptionalAction, default=None,
                    help="rebuild the model's algorithm in a sealed worker that sees neither the data, the cache, "
                         "the model's folder nor the episodes (query labels stay here). Default: sealed where "
                         "bubblewrap works (a loud warning where not); --no-seal: in this process, trusted")
    ev.add_argument("--json", action="store_true", help="print the results as JSON")
    ev.set_defaults(func=main)
    return ev
