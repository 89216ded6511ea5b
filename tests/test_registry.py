"""Plugin discovery: built-ins via entry points, --plugins-dir files, installed packages, failures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metabench.commands.cli import main
from metabench.engine.registry import PluginConflictError, UnknownPluginError, discover

BUILTINS = {("dataset", "omniglot"), ("dataset", "mnist"), ("dataset", "digits"),
            ("task_generator", "oracle"), ("algorithm", "protonet")}

GOOD_PLUGIN = '''
import torch
from metabench import Algorithm, hookimpl

class PixelMeans(Algorithm):
    """Nearest class mean on raw pixels: no meta-learning at all."""
    name = "pixel_nn"

    def setup(self, ctx):
        pass

    def train_step(self, batch, step):
        return 0.0

    def predict(self, support_x, support_y, query_x, ways):
        onehot = torch.nn.functional.one_hot(support_y, ways).to(support_x.dtype)
        protos = onehot.transpose(1, 2) @ support_x.flatten(2) / onehot.sum(1).unsqueeze(-1)
        return -torch.cdist(query_x.flatten(2), protos)

    def embed(self, x):
        return x.flatten(1)

@hookimpl
def metabench_algorithms():
    return [PixelMeans]
'''


def test_builtins_are_found_through_entry_points_with_origin():
    reg = discover()
    found = {(p.kind, p.name): p for p in reg.all()}
    assert BUILTINS <= set(found)
    for key in BUILTINS:
        assert found[key].origin == "metabench" and found[key].version
        assert found[key].description
    assert not [f for f in reg.failures if "metabench_plugins" in f.source]


def test_list_json_has_the_documented_keys(capsys):
    assert main(["list", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert all(set(i) == {"kind", "name", "origin", "version", "description", "paper", "options", "claims"}
               for i in items)
    psco = next(i for i in items if i["name"] == "psco")
    assert psco["options"]["queue_size"] == 16384 and {(c["ways"], c["shots"]) for c in psco["claims"]} == \
        {(5, 1), (5, 5), (20, 1), (20, 5)}
    assert BUILTINS <= {(i["kind"], i["name"]) for i in items}
    assert {i["kind"] for i in items} <= {"dataset", "task_generator", "algorithm"}


def test_plugins_dir_file_is_loaded_and_a_broken_file_is_reported(tmp_path, capsys):
    (tmp_path / "good.py").write_text(GOOD_PLUGIN)
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    (tmp_path / "garbage.py").write_text(textwrap.dedent('''
        from metabench import hookimpl
        @hookimpl
        def metabench_datasets():
            return ["not a class"]
    '''))
    reg = discover([tmp_path])
    info = reg.get("algorithm", "pixel_nn")
    assert info.origin == f"file {tmp_path / 'good.py'}" and info.version is None
    sources = {Path(f.source).name: f.error for f in reg.failures}
    assert "ModuleNotFoundError" in sources["broken.py"]
    assert "not a Dataset subclass" in sources["garbage.py"]
    assert BUILTINS <= {(p.kind, p.name) for p in reg.all()}  # the rest still work

    assert main(["list", "--plugins-dir", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "pixel_nn" in out.out and "broken.py skipped" in out.err


def test_same_kind_and_name_twice_is_a_clear_error(tmp_path):
    (tmp_path / "a.py").write_text(GOOD_PLUGIN)
    (tmp_path / "b.py").write_text(GOOD_PLUGIN)
    with pytest.raises(PluginConflictError, match="pixel_nn"):
        discover([tmp_path])


def test_unknown_plugin_lists_the_known_ones():
    with pytest.raises(UnknownPluginError, match="known: .*protonet"):
        discover().get("algorithm", "no_such_algorithm")


def test_pip_installed_package_with_entry_point_shows_up(tmp_path):
    pkg = tmp_path / "src"
    (pkg / "mb_thirdparty").mkdir(parents=True)
    (pkg / "mb_thirdparty" / "__init__.py").write_text(GOOD_PLUGIN)
    (pkg / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "mb-thirdparty"
        version = "1.2.3"
        [project.entry-points.metabench]
        pixel_nn = "mb_thirdparty"
    '''))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(pkg)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-m", "metabench.commands.cli", "list", "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    item = next(i for i in json.loads(out) if i["name"] == "pixel_nn")
    assert {k: item[k] for k in ("kind", "name", "origin", "version", "description")} == {
        "kind": "algorithm", "name": "pixel_nn", "origin": "mb-thirdparty", "version": "1.2.3",
        "description": "Nearest class mean on raw pixels: no meta-learning at all."}


def test_builtins_come_from_the_source_tree_of_the_core_that_loads_them(tmp_path):
    """A second tree first on PYTHONPATH (a worktree making reference records) imports its own ``plugins/``,
    not the editable install's, so the records' commit and plugin digests name one tree."""
    import shutil

    import metabench
    from metabench.engine.provenance import plugin_code_digest

    repo = Path(metabench.__file__).resolve().parent.parent
    tree = tmp_path / "tree"
    for folder in ("metabench", "plugins"):
        shutil.copytree(repo / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tree / "plugins" / "algorithms" / "protonet.py", "a") as f:
        f.write("\n# an edit made only in the second tree\n")
    probe = ("import json, sys; from metabench.engine.registry import discover; "
             "from metabench.engine.provenance import plugin_code_digest; "
             "c = discover().get('algorithm', 'protonet').cls; "
             "print(json.dumps([sys.modules['metabench_plugins'].__file__, sys.modules[c.__module__].__file__, "
             "plugin_code_digest(c)]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tree)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    package, module, digest = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(package).resolve() == (tree / "plugins" / "__init__.py").resolve()
    assert Path(module).resolve() == (tree / "plugins" / "algorithms" / "protonet.py").resolve()
    assert digest != plugin_code_digest(discover().get("algorithm", "protonet").cls)
