"""``metabench evaluate MODEL``: score a kept model (``run --save-models``) on given episodes, or again on
its own test protocols, and export those episodes for others."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from metabench.commands.common import device, plugins_parent, registry
from metabench.engine.paths import default_cache_dir, default_data_root


def _test_split(reg, c: dict, scored: str, data, args, cache_dir: Path):
    """The test split the record was scored on: the model's dataset's, or a cross-domain run's test dataset's
    (loaded with the options the record names)."""
    from metabench.contracts import DataContext

    if scored == c["dataset"]:
        return data.split("test")
    info, opts = reg.resolve("dataset", scored, c["options"].get(scored))
    return info.cls().load(DataContext(Path(args.data_root or default_data_root()), cache_dir, opts)).split("test")


def main(args: argparse.Namespace) -> int:
    """Load the model, its dataset and its algorithm; score the episodes; print (or ``--json``) the result."""
    from metabench.contracts import DataContext, PluginError
    from metabench.engine.episode_sets import EpisodeSetError, inspect_episodes, load_episodes, write_index_episodes
    from metabench.engine.evaluation import evaluate, evaluate_episodes, fixed_episode_indices, mean_ci95
    from metabench.engine.models import ModelError, load_model, rebuild
    from metabench.engine.registry import UnknownPluginError
    from metabench.engine.suite import episode_seed, test_shapes

    try:
        model = load_model(args.model)
    except ModelError as exc:
        print(f"metabench: error: {exc}", file=sys.stderr)
        return 2
    reg = registry(args)
    dev = device(args.device)
    cache_dir = Path(args.cache_dir or default_cache_dir())
    c = model.config
    try:
        ds_info, ds_opts = reg.resolve("dataset", c["dataset"], c["options"].get(c["dataset"]))
        alg_info, _ = reg.resolve("algorithm", c["algorithm"], None)
        ds = ds_info.cls()
        data = ds.load(DataContext(Path(args.data_root or default_data_root()), cache_dir, ds_opts))
        train = data.split("train").to(dev)
        algorithm = rebuild(model, alg_info.cls, dev, cache_dir, unlabeled=train.unlabeled())
    except (UnknownPluginError, PluginError, FileNotFoundError, RuntimeError, KeyError) as exc:
        print(f"metabench: error: cannot rebuild the model of {model.path}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 2
    if model.code != _code(ds_info.cls, alg_info.cls, reg, c):
        print(f"metabench: warning: {model.path} was trained by other code than is installed now (code digest "
              "differs); scoring it with today's plugins", file=sys.stderr)
    batch = int(c["budget"].get("eval_batch", 50))
    results = []
    try:
        if args.episodes:
            info = inspect_episodes(args.episodes)
            split = data.split(info.split).to(dev) if info.needs_split else None
            episodes = load_episodes(args.episodes, split=split,
                                     prepare=lambda im: ds.prepare_image(im, ds_opts))
            accs = evaluate_episodes(algorithm, episodes, batch, dev)
            results.append({"episodes": str(args.episodes), "count": len(episodes),
                            "accuracy_mean": None, "accuracy_ci95": None,
                            "episode_accuracy": accs.tolist()})
            results[-1]["accuracy_mean"], results[-1]["accuracy_ci95"] = mean_ci95(accs)
        else:
            scored = c.get("test_dataset") or c["dataset"]  # a cross-domain run is scored on another dataset
            test = _test_split(reg, c, scored, data, args, cache_dir).to(dev)
            record = _record_beside(model.path)
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
    except (EpisodeSetError, PluginError, UnknownPluginError, FileNotFoundError) as exc:
        print(f"metabench: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": str(model.path), "run_id": model.run_id, "results": results}, indent=2))
    else:
        for r in results:
            where = r.get("protocol") or r["episodes"]
            match = {True: "  (identical to the record)", False: "  (DIFFERS from the record)"}.get(
                r.get("matches_record"), "")
            print(f"{model.run_id}: {where}: {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_ci95']:.2f}% "
                  f"on {r['count']} episodes{match}")
    return 1 if any(r.get("matches_record") is False for r in results) else 0


def _code(ds_cls, alg_cls, reg, config) -> str:
    """The code digest of the installed plugins of the model's run ('' when one is gone)."""
    from metabench.engine.checkpoint import code_fingerprint
    from metabench.names import base_name

    try:
        gen_cls = reg.get("task_generator", base_name(config["task_generator"])).cls
    except Exception:
        return ""
    return code_fingerprint(ds_cls, gen_cls, alg_cls)


def _record_beside(model_file: Path):
    """The valid record of the model's run in the model's folder, if there is one."""
    from metabench.engine.records import RecordError, read_record

    path = model_file.with_name(model_file.name.removesuffix(".model.pt") + ".json")
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
    ev.add_argument("--json", action="store_true", help="print the results as JSON")
    ev.set_defaults(func=main)
    return ev
