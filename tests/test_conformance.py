"""The submission kit: check-plugin passes the built-ins and names what is wrong with broken plugins;
new-plugin writes packages that pass it, and one pip-installed from outside the project runs in a suite."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from metabench.commands.cli import main
from metabench.checks.conformance import check_plugin, failures
from metabench.engine.records import read_record
from metabench.checks.scaffold import ScaffoldError, new_plugin
from tests.helpers import write_suite

BROKEN = '''
import torch
from metabench import Algorithm, TaskGenerator, hookimpl
from metabench_plugins.algorithms.protonet import ProtoNet
from metabench_plugins.generators.oracle import Oracle


class BadShape(ProtoNet):
    name = "bad_shape"
    def predict(self, support_x, support_y, query_x, ways):
        return super().predict(support_x, support_y, query_x, ways)[:, :-1]


class Jittery(ProtoNet):
    name = "jittery"
    def predict(self, support_x, support_y, query_x, ways):
        out = super().predict(support_x, support_y, query_x, ways)
        return out + torch.rand(out.shape)          # the global RNG: not reproducible


class Forgetful(ProtoNet):
    name = "forgetful"                              # declares resumable, keeps a step count state_dict misses
    def setup(self, ctx):
        super().setup(ctx)
        self.seen = []
    def train_step(self, batch, step):          # trains on the first batch it sees only
        self.seen.append(step)
        return super().train_step(batch, step) if len(self.seen) == 1 else 1.0


class Peeking(TaskGenerator):
    name = "peeking"                                # claims to be unsupervised, reads labels
    def setup(self, data, ctx):
        self.labels = data.labels
    def sample(self, tasks, generator):
        raise NotImplementedError


class Unfinished(Algorithm):
    name = "unfinished"
    def setup(self, ctx):
        pass


def _local():
    class Local(Oracle):
        name = "local_class"
    return Local


@hookimpl
def metabench_algorithms():
    return [BadShape, Jittery, Forgetful, Unfinished]


@hookimpl
def metabench_task_generators():
    return [Peeking, _local()]
'''


def _by_check(results):
    return {r.check: r for r in results}


@pytest.mark.parametrize("name,kind,options,isolated", [
    ("digits", "dataset", {}, False),
    ("umtra", "task_generator", {}, False),
    ("protonet", "algorithm", {"hidden": 8}, True),
])
def test_builtins_pass(name, kind, options, isolated, cache_dir):
    results = check_plugin(name, kind, options=options, cache_dir=cache_dir, isolated=isolated)
    assert not failures(results), failures(results)
    checks = _by_check(results)
    assert checks["smoke run (worker process)" if isolated else "smoke run"].ok
    assert checks["deterministic"].ok and checks["picklable"].ok
    if kind == "task_generator":
        assert checks["label isolation"].ok and "UnlabeledSplit" in checks["setup"].message


@pytest.mark.parametrize("name,check,message", [
    ("bad_shape", "predict", "predict() must return logits of shape (3, 15, 5)"),
    ("jittery", "deterministic", "the same seed gave other logits"),
    ("forgetful", "resumable", "state_dict() misses some training state"),
    ("peeking", "setup", "tried to read labels from the UnlabeledSplit"),
    ("unfinished", "contract", "leaves abstract method(s) ['embed', 'predict', 'train_step'] unimplemented"),
    ("local_class", "picklable", "does not pickle"),
    ("no_such_plugin", "found", "no plugin named 'no_such_plugin'"),
])
def test_broken_plugins_fail_with_a_message_naming_the_problem(tmp_path, cache_dir, name, check, message):
    (tmp_path / "broken.py").write_text(BROKEN)
    results = check_plugin(name, plugins_dirs=[tmp_path], cache_dir=cache_dir, isolated=False)
    bad = _by_check(failures(results))
    assert check in bad and message in bad[check].message, results


def test_check_plugin_command_prints_a_table_and_exits_1(tmp_path, capsys):
    (tmp_path / "broken.py").write_text(BROKEN)
    assert main(["check-plugin", "bad_shape", "--plugins-dir", str(tmp_path), "--in-process"]) == 1
    out = capsys.readouterr()
    assert "FAIL" in out.out and "predict() must return logits" in out.out
    assert "check(s) failed: predict" in out.err


@pytest.mark.parametrize("kind,name", [("dataset", "toy_data"), ("task_generator", "toy_gen"),
                                       ("algorithm", "toy_alg")])
def test_every_template_passes_check_plugin(tmp_path, cache_dir, kind, name):
    root = new_plugin(kind, name, tmp_path)
    assert {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} == {
        "pyproject.toml", "README.md", f"metabench_{name}/__init__.py", "tests/test_conformance.py"}
    assert f'{name} = "metabench_{name}"' in (root / "pyproject.toml").read_text()
    plugdir = tmp_path / "plugdir"
    plugdir.mkdir()
    shutil.copy(root / f"metabench_{name}" / "__init__.py", plugdir / f"{name}.py")
    results = check_plugin(name, kind, plugins_dirs=[plugdir], cache_dir=cache_dir, isolated=False)
    assert not failures(results), failures(results)


def test_new_plugin_refuses_bad_names_clashes_and_overwrites(tmp_path, capsys):
    with pytest.raises(ScaffoldError, match="lower case"):
        new_plugin("algorithm", "My-Alg", tmp_path)
    with pytest.raises(ScaffoldError, match="named 'protonet' exists already"):
        new_plugin("algorithm", "protonet", tmp_path)
    assert main(["new-plugin", "algorithm", "fresh", "--dir", str(tmp_path)]) == 0
    assert main(["new-plugin", "algorithm", "fresh", "--dir", str(tmp_path)]) == 2
    assert "exists already" in capsys.readouterr().err


def test_a_new_plugin_installed_from_outside_passes_and_runs(tmp_path, cache_dir):
    assert main(["new-plugin", "algorithm", "outsider", "--dir", str(tmp_path)]) == 0
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(tmp_path / "metabench-outsider")], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    def metabench(*args):
        return subprocess.run([sys.executable, "-m", "metabench.commands.cli", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True)

    checked = metabench("check-plugin", "outsider", "--cache-dir", str(cache_dir))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "smoke run (worker process)  PASS" in checked.stdout
    listed = json.loads(metabench("list", "--json").stdout)
    keys = ("kind", "name", "origin", "version", "description")
    assert {"kind": "algorithm", "name": "outsider", "origin": "metabench-outsider", "version": "0.1.0",
            "description": "Nearest class mean on raw pixels (template: replace with your method)"} in \
        [{k: item[k] for k in keys} for item in listed]
    suite = write_suite(tmp_path / "s.toml", """
        name = "outsider"
        datasets = ["digits"]
        task_generators = ["oracle"]
        algorithms = ["outsider"]
        [[protocols]]
        ways = 5
        shots = 1
        queries = 5
        [budget]
        steps = 2
        meta_batch = 2
        test_episodes = 20
        cluster_tasks = 5
    """)
    ran = metabench("run", str(suite), "--results", str(tmp_path / "r"), "--cache-dir", str(cache_dir))
    assert ran.returncode == 0, ran.stderr
    (rec,) = [read_record(p) for p in (tmp_path / "r" / "outsider").glob("*.json")]
    assert rec["status"] == "ok" and rec["config"]["algorithm"] == "outsider"
    assert rec["evaluations"][0]["metrics"]["accuracy_mean"] > 0.4  # pixel prototypes beat chance (20%) on digits


QUICK = '''
from metabench import PluginError, hookimpl
from metabench_plugins.algorithms.protonet import ProtoNet

class Slow(ProtoNet):
    name = "slow_by_default"
    defaults = {**ProtoNet.defaults, "warmup_steps": 10**6}
    check_options = {"warmup_steps": 1, "hidden": 8}

    def setup(self, ctx):
        if ctx.options["warmup_steps"] > 100:
            raise PluginError("slow_by_default: would train for hours")
        super().setup(ctx)

@hookimpl
def metabench_algorithms():
    return [Slow]
'''


def test_check_plugin_uses_the_plugins_check_options_unless_given_others(tmp_path, cache_dir):
    (tmp_path / "quick.py").write_text(QUICK)
    results = check_plugin("slow_by_default", plugins_dirs=[tmp_path], cache_dir=cache_dir, isolated=False)
    assert not failures(results), failures(results)
    assert "'warmup_steps': 1" in _by_check(results)["contract"].message
    given = check_plugin("slow_by_default", plugins_dirs=[tmp_path], cache_dir=cache_dir, isolated=False,
                         options={"hidden": 8})           # --option replaces them all: the defaults apply
    assert "would train for hours" in " ".join(r.message for r in failures(given))
