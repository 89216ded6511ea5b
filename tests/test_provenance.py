"""Provenance: digests of a run's data and plugin code, stale records re-run and marked; what `metabench show`
and `check-plugin` tell a plugin."""
from __future__ import annotations

import csv
import json
import textwrap

import pytest
import torch

from metabench.commands.cli import main
from metabench.contracts import DataContext, ImageSet
from metabench.engine import provenance
from metabench.engine.records import SCHEMA_VERSION, read_record, write_record
from metabench.engine.registry import discover


def _imageset(images=None) -> ImageSet:
    images = torch.arange(6 * 4, dtype=torch.uint8).view(6, 1, 2, 2) if images is None else images
    return ImageSet("toy", images, torch.tensor([0, 0, 1, 1, 2, 2]),
                    {"train": torch.tensor([0, 1, 2, 3]), "test": torch.tensor([4, 5])})


def test_data_digest_sees_images_labels_and_splits_and_nothing_else():
    base = provenance.data_digest(_imageset())
    assert base == provenance.data_digest(_imageset()) and len(base) == 64
    pixel = _imageset()
    pixel.images[3, 0, 1, 1] += 1
    label = _imageset()
    label.labels[5] = 0
    split = _imageset()
    split.splits["train"] = torch.tensor([0, 1, 2, 4])
    renamed = ImageSet("other-name", *(lambda d: (d.images, d.labels, d.splits))(_imageset()))
    assert len({base, *map(provenance.data_digest, (pixel, label, split))}) == 4
    assert provenance.data_digest(renamed) == base


def _plugin_file(folder, body: str):
    folder.mkdir(exist_ok=True)
    (folder / "mine.py").write_text(textwrap.dedent(body))
    return discover([folder]).get("algorithm", "mine").cls


MINE = """
    from metabench import hookimpl
    from metabench_plugins.algorithms.protonet import ProtoNet

    class Mine(ProtoNet):
        name = "mine"
        def scale(self):
            return {scale}

    @hookimpl
    def metabench_algorithms():
        return [Mine]
"""


def test_code_digest_follows_the_plugin_its_bases_and_the_toolkit_not_the_engine(tmp_path):
    cls = _plugin_file(tmp_path / "a", MINE.format(scale=1))
    mods = provenance.code_modules(cls)
    assert "metabench_userplugin_mine" in mods and "metabench_plugins.algorithms.protonet" in mods
    assert "metabench.toolkit.nets" in mods  # ProtoNet's Conv-4
    assert not [m for m in mods if m.startswith(("metabench.engine", "metabench.contracts"))]
    same = _plugin_file(tmp_path / "b", MINE.format(scale=1))   # same source, another folder
    other = _plugin_file(tmp_path / "c", MINE.format(scale=2))
    assert provenance.plugin_code_digest(cls) == provenance.plugin_code_digest(same)
    assert provenance.plugin_code_digest(cls) != provenance.plugin_code_digest(other)


# ------------------------------------------------------------------------ run: re-run stale, keep unknown

TOY = '''
import torch
from metabench import Dataset, ImageSet, hookimpl


class Toy(Dataset):
    name = "toy"
    description = "10 classes of noise, drawn from the seed in DATA_ROOT/toy/seed.txt"

    def load(self, ctx):
        g = torch.Generator().manual_seed(int((ctx.data_root / "toy" / "seed.txt").read_text()))
        images = torch.randint(0, 256, (10, 1, 8, 8), generator=g).to(torch.uint8).repeat_interleave(8, 0)
        idx = torch.arange(80)
        return ImageSet("toy", images, torch.arange(10).repeat_interleave(8), {"train": idx[:40], "test": idx[40:]})


@hookimpl
def metabench_datasets():
    return [Toy]
'''

MINE_ALG = '''
from metabench import hookimpl
from metabench_plugins.algorithms.protonet import ProtoNet


class Mine(ProtoNet):
    name = "mine"

    def temperature(self):
        return 1  # VERSION


@hookimpl
def metabench_algorithms():
    return [Mine]
'''

SUITE = """
    name = "prov"
    datasets = ["toy"]
    task_generators = ["oracle"]
    algorithms = ["mine"]
    [[protocols]]
    ways = 5
    shots = 1
    queries = 2
    [budget]
    steps = 2
    meta_batch = 1
    test_episodes = 3
    cluster_tasks = 0
    [options.mine]
    hidden = 8
"""


@pytest.fixture()
def toy(tmp_path, cache_dir):
    """A plugins folder (a dataset drawn from a seed file in the data root, an algorithm), a suite and the
    ``metabench run`` / ``leaderboard`` arguments for them."""
    plugins, data = tmp_path / "plugins", tmp_path / "data" / "toy"
    plugins.mkdir()
    data.mkdir(parents=True)
    (plugins / "toy.py").write_text(TOY)
    (plugins / "mine.py").write_text(MINE_ALG)
    (data / "seed.txt").write_text("1")
    suite = tmp_path / "prov.toml"
    suite.write_text(textwrap.dedent(SUITE))
    common = ["--plugins-dir", str(plugins), "--data-root", str(tmp_path / "data"), "--cache-dir", str(cache_dir)]
    return {"run": ["run", str(suite), "--results", str(tmp_path / "results"), *common],
            "board": ["leaderboard", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "lb"), *common],
            "plugins": plugins, "data": data, "folder": tmp_path / "results" / "prov", "lb": tmp_path / "lb"}


def _only_record(folder):
    (path,) = sorted(folder.glob("*.json"))
    return path, read_record(path)


def _board_row(lb):
    """The toy row of leaderboard.csv as a dict (the only row)."""
    (row,) = list(csv.DictReader(open(lb / "leaderboard.csv")))
    return row


def test_records_carry_provenance_and_stale_ones_are_rerun_and_marked(toy, capsys):
    assert main(toy["run"]) == 0
    path, rec = _only_record(toy["folder"])
    reg = discover([toy["plugins"]])
    prov = rec["provenance"]
    assert set(prov["plugins"]) == {"dataset", "task_generator", "algorithm"}
    assert prov["plugins"]["algorithm"] == {"name": "mine", "version": None,
                                            "code_digest": provenance.plugin_code_digest(reg.get("algorithm", "mine").cls)}
    assert prov["plugins"]["task_generator"]["name"] == "oracle"
    toy_set = reg.get("dataset", "toy").cls().load(DataContext(toy["data"].parent, toy["data"], {}))
    assert prov["data_digest"] == provenance.data_digest(toy_set)
    capsys.readouterr()

    # nothing changed: kept, and not marked stale
    before = path.stat().st_mtime_ns
    assert main(toy["run"]) == 0
    err = capsys.readouterr().err
    assert path.stat().st_mtime_ns == before and "1 skipped" in err and "stale" not in err
    assert main(toy["board"]) == 0
    # an outside algorithm (a --plugins-dir file) runs sealed even under the oracle; it was never checked
    assert _board_row(toy["lb"])["marks"] == "unchecked"

    # the algorithm's code changed: the leaderboard marks the row stale, run re-runs it and says why
    (toy["plugins"] / "mine.py").write_text(MINE_ALG.replace("return 1  # VERSION", "return 2  # VERSION"))
    assert main(toy["board"]) == 0
    assert "stale: " + rec["run_id"] in capsys.readouterr().err
    assert _board_row(toy["lb"])["marks"] == "stale unchecked"
    md = (toy["lb"] / "README.md").read_text()
    assert "| Marks" in md and "| stale unchecked" in md and "(stale)" in md  # per-protocol and paper table
    assert "stale unchecked" in (toy["lb"] / "index.html").read_text()
    assert main(toy["run"]) == 0
    err = capsys.readouterr().err
    assert f"re-running {path}: stale record (the code of algorithm mine changed)" in err and "1 ran" in err
    _, again = _only_record(toy["folder"])
    assert again["provenance"]["plugins"]["algorithm"]["code_digest"] != prov["plugins"]["algorithm"]["code_digest"]
    assert again["provenance"]["data_digest"] == prov["data_digest"]

    # the data changed (same files names, other tensors): stale again
    (toy["data"] / "seed.txt").write_text("2")
    assert main(toy["run"]) == 0
    err = capsys.readouterr().err
    assert "stale record (the data changed)" in err and "1 ran" in err
    _, third = _only_record(toy["folder"])
    assert third["provenance"]["data_digest"] != prov["data_digest"]
    assert main(toy["board"]) == 0
    # an outside algorithm (a --plugins-dir file) runs sealed even under the oracle; it was never checked
    assert _board_row(toy["lb"])["marks"] == "unchecked"


def test_records_without_provenance_are_kept_and_marked_unknown_and_bad_ones_named(toy, capsys):
    assert main(toy["run"]) == 0
    path, rec = _only_record(toy["folder"])
    old = {k: v for k, v in rec.items() if k != "provenance"}  # as made before provenance was recorded
    old["isolation"] = {"sealed": True, "checked": True, "code_digest": None}
    write_record(path, old)
    capsys.readouterr()
    before = path.stat().st_mtime_ns
    assert main(toy["run"]) == 0
    err = capsys.readouterr().err
    assert path.stat().st_mtime_ns == before and "1 skipped" in err
    assert "1 existing ok record(s) carry no provenance" in err and "--force" in err
    assert main(toy["board"]) == 0
    assert _board_row(toy["lb"])["marks"] == "no-provenance"
    assert main([*toy["run"], "--force"]) == 0
    assert "provenance" in read_record(path)

    path.write_text(path.read_text()[:100])  # torn
    assert main(toy["run"]) == 0
    err = capsys.readouterr().err
    assert f"replacing {path}: not valid JSON" in err and "1 ran" in err
    data = json.loads(path.read_text())
    data["schema_version"] = 1
    path.write_text(json.dumps(data))
    assert main(toy["run"]) == 0
    assert f"replacing {path}: schema_version 1 is not supported" in capsys.readouterr().err
    assert read_record(path)["schema_version"] == SCHEMA_VERSION


def test_a_cross_domain_run_has_the_test_datasets_digest_and_plugin():
    sets = {"digits": _imageset(), "mnist": _imageset(torch.zeros(6, 1, 2, 2, dtype=torch.uint8))}
    fp = provenance.Fingerprints(discover(), lambda entry, options: sets[entry])
    config = {"dataset": "digits", "test_dataset": "mnist", "task_generator": "umtra", "algorithm": "protonet",
              "options": {"digits": {}, "mnist": {}}}
    record = {"provenance": fp.current(config), "config": config}
    assert record["provenance"]["test_data_digest"] == provenance.data_digest(sets["mnist"])
    assert record["provenance"]["plugins"]["test_dataset"]["name"] == "mnist"
    assert fp.staleness(record) == ("fresh", [])
    sets["mnist"] = _imageset()
    assert provenance.Fingerprints(discover(), lambda e, o: sets[e]).staleness(record) == \
        ("stale", ["the test data changed"])
    assert fp.staleness({"config": config}) == ("unknown", [])
    broken = provenance.Fingerprints(discover(), lambda e, o: (_ for _ in ()).throw(FileNotFoundError("gone")))
    assert broken.staleness(record) == ("unverified", ["FileNotFoundError: gone"])


# ---------------------------------------------------------------------------- show, check-plugin's context

def test_show_prints_one_plugin_with_options_claims_and_code_digest(capsys):
    assert main(["show", "protonet"]) == 0
    out = capsys.readouterr().out
    cls = discover().get("algorithm", "protonet").cls
    assert out.startswith("protonet (algorithm)") and "  options:\n    backbone = \"conv4\"" in out
    assert "omniglot 5-way 1-shot: 98.80% (Snell et al. 2017, Table 1)" in out
    assert provenance.plugin_code_digest(cls) in out and "metabench_plugins.algorithms.protonet" in out
    assert main(["show", "protonet", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["options"]["hidden"] == 64 and d["claims"] and d["code_digest"] == provenance.plugin_code_digest(cls)
    assert main(["show", "protonett"]) == 2
    assert "no plugin named 'protonett'; known: " in capsys.readouterr().err


NAMED = '''
from metabench import PluginError, hookimpl
from metabench_plugins.generators.umtra import Umtra


class Named(Umtra):
    name = "named"

    def setup(self, data, ctx):
        if ctx.dataset != "digits":
            raise PluginError(f"named: RunContext.dataset is {ctx.dataset!r}")
        super().setup(data, ctx)


@hookimpl
def metabench_task_generators():
    return [Named]
'''


def test_check_plugin_gives_a_generator_the_datasets_name_as_run_does(tmp_path, cache_dir):
    from metabench.checks.conformance import _Battery, _check_contract, _check_generator, _reference_data

    (tmp_path / "named.py").write_text(NAMED)
    reg = discover([tmp_path])
    digits = _reference_data(reg, tmp_path, cache_dir)
    b, info = _Battery(), reg.get("task_generator", "named")
    _check_generator(b, info, _check_contract(b, info, {}), digits, cache_dir)
    result = {r.check: r for r in b.results}
    assert digits.name == "digits" and result["setup"].ok, result["setup"].message
