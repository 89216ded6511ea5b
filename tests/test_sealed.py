"""Sealed runs: honest plugins give the records they give unsealed, bit for bit; cheats that reach for labels
(garbage collector, caller frames, registry, dataset files, cache) and vandals (deleting records, writing
into the data root) fail ``check-plugin`` and get ``failed`` records from ``run``, and nothing is lost; a kept
model is scored in a sealed worker too, where it cannot read the episodes (their query labels)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from metabench.checks.conformance import SEALED, check_plugin, failures
from metabench.commands.cli import main
from metabench.engine import check_stamps, checkpoint, code_digest, plugin_probe, provenance, sealed
from metabench.engine.records import read_record
from metabench.engine.registry import discover
from tests.cheats import CHEATS, SCORING_CHEATS, VANDALS
from tests.helpers import scores, write_suite

needs_bwrap = pytest.mark.skipif(not sealed.supported()[0], reason=f"cannot seal here: {sealed.supported()[1]}")

TINY = """
    name = "{name}"
    datasets = ["{dataset}"]
    task_generators = {generators}
    algorithms = {algorithms}
    seeds = [0]
    [[protocols]]
    ways = 5
    shots = 1
    queries = 3
    [budget]
    steps = {steps}
    meta_batch = 2
    test_episodes = 10
    cluster_tasks = 4
"""
OPTIONS = {  # small models: every test here is about isolation, not accuracy
    "protonet": "hidden = 8",
    "cactus": 'embedding = "pixels"\npartitions = 2\nclusters = 12',
    "meta_gmvae": "train_steps = 2\nimages_per_task = 30\nhidden = 16\nlatent = 8",
}


def _suite(tmp_path, name, generators, algorithms, dataset="digits", steps=3):
    """A tiny digits suite; ``meta_gmvae`` pairs with the ``unlabeled`` generator only, as it learns alone."""
    text = TINY.format(name=name, dataset=dataset, steps=steps, generators=list(generators),
                       algorithms=list(algorithms)).replace("'", '"')
    for plugin, body in OPTIONS.items():
        if plugin in (*generators, *algorithms):
            text += f"\n[options.{plugin}]\n{body}\n"
    if "meta_gmvae" in algorithms:
        text += "\n[budget.meta_gmvae]\nsteps = 0\nmeta_batch = 1\n"
        text += "\n[[exclude]]\nalgorithm = \"meta_gmvae\"\ntask_generator = " + \
            str([g for g in generators if g != "unlabeled"]).replace("'", '"') + "\n"
    if "unlabeled" in generators:
        text += "\n[[exclude]]\ntask_generator = \"unlabeled\"\nalgorithm = " + \
            str([a for a in algorithms if a != "meta_gmvae"]).replace("'", '"') + "\n"
    return write_suite(tmp_path / f"{name}.toml", text)


def _plugins(tmp_path) -> Path:
    plug = tmp_path / "plugins"
    plug.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).with_name("cheats.py"), plug / "cheats.py")
    return plug


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _records(folder: Path) -> dict[str, dict]:
    return {(r := read_record(p))["config"]["task_generator"] + "+" + r["config"]["algorithm"]: r
            for p in sorted(folder.glob("*.json"))}


@needs_bwrap
def test_honest_records_are_bit_identical_sealed_and_unsealed(tmp_path, cache_dir):
    suite = _suite(tmp_path, "honest", ["umtra", "cactus", "unlabeled"], ["protonet", "meta_gmvae"])
    got = {}
    for flag in ("--no-seal", "--seal"):
        out = tmp_path / flag.strip("-")
        assert main(["run", str(suite), "--results", str(out), "--cache-dir", str(cache_dir), flag]) == 0
        got[flag] = _records(out / "honest")
    assert set(got["--seal"]) == {"umtra+protonet", "cactus+protonet", "unlabeled+meta_gmvae"}
    for key, rec in got["--seal"].items():
        plain = got["--no-seal"][key]
        assert rec["isolation"]["sealed"] is True and plain["isolation"]["sealed"] is False
        assert rec["isolation"]["code_digest"] == plain["isolation"]["code_digest"]
        assert scores(rec) == scores(plain), key
        assert rec["final_train_loss"] == plain["final_train_loss"], key
        assert rec["speed"]["meta_train_tasks"] == plain["speed"]["meta_train_tasks"]
        # a sealed run's memory counts both processes: the worker holds the model and the training images too
        speed = rec["speed"]
        assert speed["worker_peak_mem_mb"] > 50 and speed["supervisor_peak_mem_mb"] > 50
        assert speed["peak_mem_mb"] == speed["supervisor_peak_mem_mb"] + speed["worker_peak_mem_mb"]
        assert "worker_peak_mem_mb" not in plain["speed"]
    assert "own_nmi" in got["--seal"]["unlabeled+meta_gmvae"]["evaluations"][0]["metrics"]  # cluster() served


def _baited(tmp_path, cache_dir, monkeypatch):
    """A data root and a results folder holding an honest record, pointed at by ``$CHEAT_*`` for vandals:
    ``(results, data_root, run args, the record, its bytes, the data root's digest)``."""
    results, data_root = tmp_path / "results", tmp_path / "data"
    (data_root / "MNIST").mkdir(parents=True)
    (data_root / "MNIST" / "README").write_text("data that must stay as it is\n")
    honest = _suite(tmp_path, "honest", ["umtra"], ["protonet"])
    args = ["--results", str(results), "--cache-dir", str(cache_dir), "--data-root", str(data_root)]
    assert main(["run", str(honest), *args]) == 0
    (kept,) = (results / "honest").glob("*.json")
    before_record, before_data = kept.read_bytes(), _tree_digest(data_root)
    monkeypatch.setenv("CHEAT_RESULTS", str(results))
    monkeypatch.setenv("CHEAT_DATA_ROOT", str(data_root))
    return results, data_root, args, kept, before_record, before_data


@needs_bwrap
def test_cheats_and_vandals_get_failed_records_and_nothing_is_lost(tmp_path, cache_dir, monkeypatch):
    results, data_root, args, kept, before_record, before_data = _baited(tmp_path, cache_dir, monkeypatch)
    plug = _plugins(tmp_path)
    cheats = _suite(tmp_path, "cheats", CHEATS, ["protonet"])
    vandals = _suite(tmp_path, "vandals", ["umtra"], VANDALS)
    for suite in (cheats, vandals):
        assert main(["run", str(suite), *args, "--plugins-dir", str(plug)]) == 1
    got = {**_records(results / "cheats"), **_records(results / "vandals")}
    assert set(got) == {f"{c}+protonet" for c in CHEATS} | {f"umtra+{v}" for v in VANDALS}
    for key, rec in got.items():
        assert rec["status"] == "failed", key
    assert "broke the seal" in got["umtra+vandal_eraser"]["error"]
    assert "broke the seal" in got["umtra+vandal_scribbler"]["error"]
    for name in ("cheat_registry", "cheat_files", "cheat_cache"):
        assert "broke the seal" in got[f"{name}+protonet"]["error"], got[f"{name}+protonet"]["error"]
    assert kept.read_bytes() == before_record
    assert _tree_digest(data_root) == before_data


@needs_bwrap
def test_a_kept_model_is_scored_sealed_and_cannot_read_its_episodes(tmp_path, cache_dir, monkeypatch, capsys):
    """``metabench evaluate`` rebuilds the algorithm in a sealed worker: an honest model scores there as it
    does in-process, bit for bit; one that reads the episode file it is scored on is refused, by name."""
    plug = _plugins(tmp_path)
    suite = _suite(tmp_path, "kept", ["umtra"], ["cheat_peek"])
    args = ["--cache-dir", str(cache_dir), "--data-root", str(tmp_path / "none")]
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), *args, "--plugins-dir", str(plug),
                 "--save-models"]) == 0
    (model,) = (tmp_path / "r" / "kept").glob("*.model.pt")
    run = [str(model), *args, "--plugins-dir", str(plug), "--json"]
    capsys.readouterr()
    assert main(["evaluate", *run, "--export-episodes", str(tmp_path / "eps")]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["sealed"] is True and [r["matches_record"] for r in own["results"]] == [True]
    with monkeypatch.context() as m:   # the working folder holds the model: its files are hidden, not the folder
        m.chdir(model.parent)
        assert main(["evaluate", *run]) == 0
        assert [r["matches_record"] for r in json.loads(capsys.readouterr().out)["results"]] == [True]
    (episodes,) = (tmp_path / "eps").glob("*.json")
    scored = {}
    for flag in ("--seal", "--no-seal"):   # not peeking yet: the same numbers either way
        assert main(["evaluate", *run, "--episodes", str(episodes), flag]) == 0
        scored[flag] = json.loads(capsys.readouterr().out)
    assert scored["--seal"]["sealed"] is True and scored["--no-seal"]["sealed"] is False
    assert scored["--seal"]["results"] == scored["--no-seal"]["results"]
    monkeypatch.setenv("CHEAT_EPISODES", str(episodes))
    assert main(["evaluate", *run, "--episodes", str(episodes)]) == 2
    err = capsys.readouterr().err
    assert "algorithm:cheat_peek" in err and "broke the seal" in err and str(episodes) in err


@needs_bwrap
def test_real_mnist_cheats_fail_sealed(tmp_path, cache_dir, data_root, monkeypatch):
    if not (data_root / "MNIST" / "raw").is_dir():
        pytest.skip("no MNIST under the data root")
    before = _tree_digest(data_root / "MNIST")
    monkeypatch.setenv("CHEAT_DATA_ROOT", str(data_root))
    suite = _suite(tmp_path, "mnist-cheats", CHEATS, ["protonet"], dataset="mnist", steps=1)
    args = ["--results", str(tmp_path / "r"), "--cache-dir", str(cache_dir), "--data-root", str(data_root)]
    assert main(["run", str(suite), *args, "--plugins-dir", str(_plugins(tmp_path))]) == 1
    got = _records(tmp_path / "r" / "mnist-cheats")
    assert len(got) == len(CHEATS) and all(r["status"] == "failed" for r in got.values())
    assert _tree_digest(data_root / "MNIST") == before


@needs_bwrap
@pytest.mark.parametrize("name", [*CHEATS, *VANDALS])
def test_every_cheat_and_vandal_fails_check_plugin(name, tmp_path, cache_dir, monkeypatch):
    # what the vandals go for: ./results and a data root (check-plugin also runs plugins in its own process)
    monkeypatch.chdir(tmp_path)
    for bait in ("results", "data"):
        (tmp_path / bait).mkdir()
        (tmp_path / bait / "record.json").write_text("{}\n")
    monkeypatch.setenv("CHEAT_RESULTS", "results")
    monkeypatch.setenv("CHEAT_DATA_ROOT", "data")
    results = {r.check: r for r in check_plugin(name, plugins_dirs=[_plugins(tmp_path)], cache_dir=cache_dir,
                                                   isolated=False)}
    assert results[SEALED].ok is False, results[SEALED]
    assert "stamp" not in results
    info = discover([tmp_path / "plugins"]).get("algorithm" if name in VANDALS else "task_generator", name)
    assert not check_stamps.is_checked(cache_dir, info.kind, name, info.cls)


@needs_bwrap
def test_a_checked_plugin_is_stamped_and_its_records_say_so(tmp_path, cache_dir):
    results = check_plugin("umtra", "task_generator", cache_dir=tmp_path / "cache", isolated=False)
    assert not failures(results), failures(results)
    assert {r.check: r for r in results}[SEALED].ok
    suite = _suite(tmp_path, "stamped", ["umtra"], ["protonet"])
    args = ["--results", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "cache")]
    assert main(["run", str(suite), *args]) == 0
    (rec,) = _records(tmp_path / "r" / "stamped").values()
    assert rec["isolation"]["sealed"] is True and rec["isolation"]["checked"] is False  # protonet: no stamp
    registry = discover()
    check_stamps.write_stamp(tmp_path / "cache", "algorithm", "protonet", registry.get("algorithm", "protonet").cls)
    assert main(["run", str(suite), *args, "--force"]) == 0
    (rec,) = _records(tmp_path / "r" / "stamped").values()
    assert rec["isolation"] == {**rec["isolation"], "sealed": True, "checked": True}


def test_without_bubblewrap_runs_go_on_unsealed_with_a_loud_warning(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.setattr(sealed, "supported", lambda: (False, "no bubblewrap in this test"))
    suite = _suite(tmp_path, "unsealed", ["umtra"], ["protonet"])
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--cache-dir", str(cache_dir)]) == 0
    (rec,) = _records(tmp_path / "r" / "unsealed").values()
    assert rec["status"] == "ok" and rec["isolation"]["sealed"] is False
    assert "NOT sealed: no bubblewrap in this test" in capsys.readouterr().err


@needs_bwrap
def test_a_sealed_run_checkpoints_through_the_supervisor_and_resumes_bit_identically(tmp_path, cache_dir,
                                                                                     monkeypatch):
    from metabench.engine import checkpoint

    suite = _suite(tmp_path, "resume", ["umtra"], ["protonet"], steps=6)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert main(["run", str(suite), "--results", str(whole), "--cache-dir", str(cache_dir)]) == 0
    save, saved = checkpoint.save, []

    def save_then_stop(path, payload):  # the worker's third checkpoint is written, then the run dies
        save(path, payload)
        saved.append(payload["step"])
        if len(saved) == 3:
            raise RuntimeError("interrupted")

    args = ["run", str(suite), "--results", str(broken), "--cache-dir", str(cache_dir), "--checkpoint-every", "0"]
    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    assert main(args) == 1
    monkeypatch.setattr(checkpoint, "save", save)
    assert main(args) == 0
    (a,), (b,) = _records(whole / "resume").values(), _records(broken / "resume").values()
    assert saved == [1, 2, 3] and b["speed"]["resumed_from_step"] == 3 and b["isolation"]["sealed"]
    assert scores(a) == scores(b) and a["final_train_loss"] == b["final_train_loss"]


@needs_bwrap
def test_an_outside_module_is_imported_only_in_a_sandbox(tmp_path, cache_dir, monkeypatch):
    """A plugin that vandalises at import time (before any run is sealed) never runs in the supervisor:
    ``run`` and ``list`` import outside modules in a sandbox and use stand-ins; records and data stay."""
    results, data_root, args, kept, before_record, before_data = _baited(tmp_path, cache_dir, monkeypatch)
    plug = tmp_path / "plugins"
    plug.mkdir()
    shutil.copy(Path(__file__).with_name("import_vandal.py"), plug / "import_vandal.py")

    reg = discover([plug], confine=True, hide=[results, data_root, cache_dir])
    cls = reg.get("algorithm", "import_vandal").cls
    assert plugin_probe.is_stand_in(cls) and cls.defaults["tuple_option"] == (1, 2)
    with pytest.raises(Exception, match="only in a sealed worker"):
        cls().setup(None)
    assert main(["list", "--plugins-dir", str(plug)]) == 0
    suite = _suite(tmp_path, "outside", ["umtra"], ["import_vandal"])
    assert main(["run", str(suite), *args, "--plugins-dir", str(plug)]) == 1
    (rec,) = _records(results / "outside").values()
    assert rec["status"] == "failed" and "broke the seal" in rec["error"]   # its import, in the worker
    board = tmp_path / "board"
    assert main(["leaderboard", "--results", str(results), "--out", str(board), "--plugins-dir", str(plug),
                 "--cache-dir", str(cache_dir), "--data-root", str(data_root)]) == 0
    assert "import_vandal" in (board / "README.md").read_text()   # its failed run is listed, nothing is lost
    assert kept.read_bytes() == before_record and _tree_digest(data_root) == before_data

    # the same module imported here (what a plain discovery did) is a real vandal
    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    monkeypatch.setenv("CHEAT_RESULTS", str(copy))
    discover([plug])
    assert not list(copy.rglob("*.json"))


def _outside_plugin(tmp_path) -> Path:
    """A --plugins-dir holding an honest outside algorithm, ``outside_protonet`` (ProtoNet by another name)."""
    plug = tmp_path / "plugins"
    plug.mkdir()
    (plug / "outside.py").write_text(
        "from metabench import hookimpl\n"
        "from metabench_plugins.algorithms.protonet import ProtoNet\n\n\n"
        "class Outside(ProtoNet):\n    name = 'outside_protonet'\n    check_options = {'hidden': 8}\n\n\n"
        "@hookimpl\ndef metabench_algorithms():\n    return [Outside]\n")
    return plug


@needs_bwrap
def test_an_outside_plugin_is_checked_in_a_sandbox_and_stamped_here(tmp_path, cache_dir, monkeypatch):
    """check-plugin of an outside plugin imports it only in sandboxes: an honest one passes every check and
    is stamped (its records then say checked); one that vandalises at import loses nothing."""
    plug = _outside_plugin(tmp_path)
    stamps = tmp_path / "cache"
    results = check_plugin("outside_protonet", plugins_dirs=[plug], cache_dir=stamps, isolated=False)
    assert not failures(results), failures(results)
    got = {r.check: r for r in results}
    assert got[SEALED].ok and got["stamp"].ok and "smoke run" in got and "contract" in got
    suite = _suite(tmp_path, "outside", ["umtra"], ["outside_protonet"])
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--cache-dir", str(stamps),
                 "--plugins-dir", str(plug)]) == 0
    (rec,) = _records(tmp_path / "r" / "outside").values()
    assert rec["isolation"]["sealed"] is True and rec["isolation"]["checked"] is False   # umtra: not stamped here
    for confine in (True, False):   # the stamp holds for the stand-in and for the class imported here
        cls = discover([plug], confine=confine).get("algorithm", "outside_protonet").cls
        assert check_stamps.is_checked(stamps, "algorithm", "outside_protonet", cls)

    monkeypatch.chdir(tmp_path)
    for bait in ("results", "data"):
        (tmp_path / bait).mkdir()
        (tmp_path / bait / "record.json").write_text("{}\n")
    monkeypatch.setenv("CHEAT_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("CHEAT_DATA_ROOT", str(tmp_path / "data"))
    shutil.copy(Path(__file__).with_name("import_vandal.py"), plug / "import_vandal.py")
    results = {r.check: r for r in check_plugin("import_vandal", plugins_dirs=[plug], cache_dir=stamps,
                                                   isolated=False)}
    assert results[SEALED].ok is False and "stamp" not in results
    assert (tmp_path / "results" / "record.json").exists() and not (tmp_path / "data" / "scribbled-at-import.txt").exists()


@needs_bwrap
def test_an_honest_outside_plugin_runs_sealed_as_it_runs_here(tmp_path, cache_dir):
    """A stand-in's run (the module imported in the probe and the worker only) gives the record that
    importing it here gives, bit for bit, with the same code digest."""
    plug = _outside_plugin(tmp_path)
    suite = _suite(tmp_path, "outside", ["umtra"], ["outside_protonet"])
    got = {}
    for flag in ("--no-seal", "--seal"):
        out = tmp_path / flag.strip("-")
        assert main(["run", str(suite), "--results", str(out), "--cache-dir", str(cache_dir), flag,
                     "--plugins-dir", str(plug)]) == 0
        (got[flag],) = _records(out / "outside").values()
    sealed_rec, plain = got["--seal"], got["--no-seal"]
    assert sealed_rec["status"] == "ok" and sealed_rec["isolation"]["sealed"] is True
    assert sealed_rec["isolation"]["code_digest"] == plain["isolation"]["code_digest"]
    assert scores(sealed_rec) == scores(plain) and sealed_rec["final_train_loss"] == plain["final_train_loss"]


@needs_bwrap
def test_stand_ins_carry_the_digests_and_flags_of_the_classes_they_stand_for(tmp_path):
    plug = _plugins(tmp_path)
    plain, confined = discover([plug]), discover([plug], confine=True)
    names = {(k, n) for k in ("task_generator", "algorithm") for n in plain.plugins[k] if n.startswith(("cheat", "vandal"))}
    assert len(names) == len(CHEATS) + len(VANDALS) + len(SCORING_CHEATS)
    for kind, name in names:
        real, stand = plain.get(kind, name).cls, confined.get(kind, name).cls
        assert plugin_probe.is_stand_in(stand) and not plugin_probe.is_stand_in(real)
        assert provenance.plugin_code_digest(stand) == provenance.plugin_code_digest(real)
        assert provenance.code_modules(stand) == provenance.code_modules(real)
        assert checkpoint.code_fingerprint(stand) == checkpoint.code_fingerprint(real)
        assert stand.defaults == real.defaults and stand.resolve_options({}) == real.resolve_options({})
        for flag in ("uses_labels", "gives_tasks", "needs_tasks", "trains_per_way", "resumable"):
            assert getattr(stand, flag, None) == getattr(real, flag, None), (name, flag)
        if kind == "algorithm":
            assert stand.has_own_clustering() == real.has_own_clustering()
    # a built-in is never a stand-in
    assert not plugin_probe.is_stand_in(confined.get("algorithm", "protonet").cls)


def test_a_reported_digest_that_does_not_match_the_files_is_refused(tmp_path):
    honest = tmp_path / "honest.py"
    honest.write_text("x = 1\n")
    mine = tmp_path / "mine.py"
    mine.write_text("y = 2\n")
    meta = {"name": "borrower", "module": "m", "qualname": "C",
            "code_sources": [["metabench_userplugin_honest", str(honest)]]}
    meta["code_digest"] = code_digest.digest_sources([("metabench_userplugin_honest", honest.read_bytes())], "m.C")
    with pytest.raises(ValueError, match="not those of its source"):   # another file's digest
        plugin_probe.check_digest(meta, {"kind": "file", "path": str(mine)})
    plugin_probe.check_digest(meta, {"kind": "file", "path": str(honest)})
    meta["code_digest"] = "0" * 64
    with pytest.raises(ValueError, match="does not match"):
        plugin_probe.check_digest(meta, {"kind": "file", "path": str(honest)})
