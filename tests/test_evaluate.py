"""Kept models (``run --save-models``) and ``metabench evaluate``: bit-for-bit re-scoring, given episode
sets (JSON and folders), and refusals that name the bad file."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from metabench.commands.cli import main
from metabench.engine.models import ModelError, load_model
from metabench.engine.records import read_record
from metabench_plugins.datasets.omniglot import _list_pngs, find_sources
from tests.helpers import write_suite


def _read(src: Path, set_name: str, name: str) -> bytes:
    """The bytes of drawing ``name`` of an Omniglot set (a folder or a zip)."""
    if src.is_dir():
        return (src / name).read_bytes()
    with zipfile.ZipFile(src) as zf:
        return zf.read(f"{set_name}/{name}")

SUITE = """
    name = "kept"
    datasets = ["digits"]
    task_generators = ["oracle"]
    algorithms = ["protonet", "maml"]
    [[protocols]]
    train_ways = 5
    train_shots = 1
    train_queries = 5
    tests = [{ways = 5, shots = 1, queries = 5}, {ways = 5, shots = 5, queries = 5}]
    [budget]
    steps = 6
    meta_batch = 2
    test_episodes = 30
    cluster_tasks = 0
    [options.protonet]
    hidden = 8
    [options.maml]
    hidden = 8
"""


@pytest.fixture(scope="module")
def kept(tmp_path_factory, cache_dir):
    tmp = tmp_path_factory.mktemp("kept")
    suite = write_suite(tmp / "kept.toml", SUITE)
    env = ["--results", str(tmp / "results"), "--cache-dir", str(cache_dir), "--data-root", str(tmp / "none")]
    assert main(["run", str(suite), *env, "--save-models"]) == 0
    return tmp / "results" / "kept", env[2:]


def test_a_kept_model_rescores_its_own_episodes_bit_for_bit(kept, tmp_path, capsys):
    folder, env = kept
    models = sorted(folder.glob("*.model.pt"))
    assert len(models) == 2
    for m in models:
        record = read_record(m.with_name(m.name.removesuffix(".model.pt") + ".json"))
        assert record["model"]["file"] == m.name and load_model(m).run_id == record["run_id"]
        capsys.readouterr()
        assert main(["evaluate", str(m), *env, "--json", "--export-episodes", str(tmp_path / "eps")]) == 0
        out = json.loads(capsys.readouterr().out)
        assert [r["matches_record"] for r in out["results"]] == [True, True]
        # the exported episode set scores the same as the record, through the episode-set path
        first = record["evaluations"][1]
        exported = tmp_path / "eps" / "digits-5w5s5q-seed0.json"
        assert main(["evaluate", str(m), *env, "--json", "--episodes", str(exported)]) == 0
        (res,) = json.loads(capsys.readouterr().out)["results"]
        assert res["count"] == 30 and res["accuracy_mean"] == pytest.approx(first["metrics"]["accuracy_mean"],
                                                                          abs=1e-12)


def test_tampered_or_truncated_models_are_refused_by_name(kept, tmp_path, capsys):
    folder, env = kept
    m = sorted(folder.glob("*protonet*.model.pt"))[0]
    data = bytearray(m.read_bytes())
    tampered = tmp_path / "tampered.model.pt"
    # flip a byte inside the stored state bytes, found by searching the file for a run of them
    raw = torch.load(m, weights_only=True)["state"].numpy().tobytes()
    at = bytes(data).find(raw[200:264])
    assert at > 0
    data[at + 10] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="tampered.model.pt.*(SHA-256|not a readable)"):
        load_model(tampered)
    truncated = tmp_path / "truncated.model.pt"
    truncated.write_bytes(m.read_bytes()[:1000])
    for bad in (tampered, truncated, tmp_path / "absent.model.pt"):
        capsys.readouterr()
        assert main(["evaluate", str(bad), *env]) == 2
        assert bad.name in capsys.readouterr().err


def test_an_episode_file_with_a_missing_image_is_refused_by_name(kept, tmp_path, capsys):
    folder, env = kept
    m = sorted(folder.glob("*protonet*.model.pt"))[0]
    ep = {"format": "metabench-episodes", "version": 1, "episodes": [
        {"support": [{"class": 0, "path": "gone.png"}, {"class": 1, "path": "gone2.png"}],
         "query": [{"class": 0, "path": "gone.png"}]}]}
    f = tmp_path / "eps.json"
    f.write_text(json.dumps(ep))
    assert main(["evaluate", str(m), *env, "--episodes", str(f)]) == 2
    err = capsys.readouterr().err
    assert "gone.png" in err and "eps.json" in err


def test_a_lake_model_scores_a_folder_of_evaluation_alphabet_episodes(data_root, cache_dir, tmp_path, capsys):
    suite = write_suite(tmp_path / "lake.toml", """
        name = "lake"
        datasets = ["omniglot"]
        task_generators = ["oracle"]
        algorithms = ["protonet"]
        [[protocols]]
        ways = 5
        shots = 1
        queries = 3
        [budget]
        steps = 20
        meta_batch = 2
        test_episodes = 10
        cluster_tasks = 0
        [options.omniglot]
        split = "lake"
        [options.protonet]
        hidden = 16
    """)
    env = ["--cache-dir", str(cache_dir), "--data-root", str(data_root)]
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), *env, "--save-models"]) == 0
    (model,) = (tmp_path / "r" / "lake").glob("*.model.pt")
    src = find_sources(data_root)["images_evaluation"]  # the evaluation alphabets, never trained on
    pngs = _list_pngs(src, "images_evaluation")
    chars = sorted({n.rsplit("/", 1)[0] for n in pngs})
    eps = tmp_path / "episodes"
    for e in range(3):  # 3 episodes, 5 evaluation-alphabet characters each, 1 support + 3 queries
        for c, char in enumerate(chars[e * 40:e * 40 + 200:40]):
            drawings = [n for n in pngs if n.startswith(char + "/")][:4]
            for part, names in (("support", drawings[:1]), ("query", drawings[1:])):
                d = eps / f"ep{e}" / part / f"c{c}"
                d.mkdir(parents=True, exist_ok=True)
                for n in names:
                    (d / n.rsplit("/", 1)[1]).write_bytes(_read(src, "images_evaluation", n))
    capsys.readouterr()
    assert main(["evaluate", str(model), *env, "--episodes", str(eps), "--json"]) == 0
    (res,) = json.loads(capsys.readouterr().out)["results"]
    assert res["count"] == 3 and len(res["episode_accuracy"]) == 3
    assert res["accuracy_mean"] > 0.34  # well above chance (20%) after 20 steps on the background alphabets


def test_a_model_saved_before_its_plugin_gained_an_option_rebuilds_with_the_default(kept):
    """Options a plugin adds later take their defaults when an older model file is rebuilt."""
    from metabench.engine.models import rebuild
    from metabench_plugins.algorithms.protonet import ProtoNet

    folder, _ = kept
    model = load_model(sorted(folder.glob("*protonet*.model.pt"))[0])
    model.context["options"] = {k: v for k, v in model.context["options"].items() if k != "lr_decay_every"}
    algorithm = rebuild(model, ProtoNet, torch.device("cpu"), None)
    assert algorithm.sched.step_size == ProtoNet.defaults["lr_decay_every"]


def test_evaluate_scores_with_the_thread_count_of_the_record_unless_told(kept, tmp_path, monkeypatch, capsys):
    """CPU reductions depend on torch's thread count: scoring uses the count the run's record names (so a
    machine with other cores still reproduces it), ``--threads`` overrides it, and the count is restored."""
    import shutil

    from metabench.commands import evaluate as ev

    folder, env = kept
    model = sorted(folder.glob("*protonet*.model.pt"))[0]
    record_file = model.with_name(model.name.removesuffix(".model.pt") + ".json")
    here = tmp_path / "copy"
    here.mkdir()
    shutil.copy(model, here / model.name)
    record = json.loads(record_file.read_text())
    before = torch.get_num_threads()
    record["environment"]["threads"] = before + 2
    (here / record_file.name).write_text(json.dumps(record))
    seen = []
    score = ev._score
    monkeypatch.setattr(ev, "_score", lambda *a: seen.append(torch.get_num_threads()) or score(*a))
    # exit 1 if the other thread count changed a score (tiny ProtoNets often come out the same)
    assert main(["evaluate", str(here / model.name), *env, "--no-seal"]) in (0, 1)
    assert f"scoring with {before + 2} torch threads" in capsys.readouterr().err
    assert main(["evaluate", str(here / model.name), *env, "--no-seal", "--threads", str(before)]) == 0
    assert main(["evaluate", str(model), *env, "--no-seal"]) == 0
    assert seen == [before + 2, before, before] and torch.get_num_threads() == before
