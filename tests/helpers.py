"""Small builders shared by the tests."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

from metabench.engine.records import migrate, read_record


def write_suite(path: Path, body: str) -> Path:
    """Write a suite TOML file (dedented) and return its path."""
    path.write_text(textwrap.dedent(body))
    return path


TINY_DIGITS = """
    name = "tiny"
    datasets = ["digits"]
    task_generators = ["oracle"]
    algorithms = ["protonet"]
    seeds = [0]
    [[protocols]]
    ways = 5
    shots = 1
    queries = 5
    [budget]
    steps = 15
    meta_batch = 2
    test_episodes = 40
    [options.protonet]
    hidden = 16
"""


# Algorithms that break the contract in each of the ways a run must survive (a plugins-dir file).
GARBAGE_PLUGIN = '''
import time
import torch
from metabench import hookimpl
from metabench_plugins.algorithms.protonet import ProtoNet

class Exploding(ProtoNet):
    name = "exploding"
    def train_step(self, batch, step):
        if step == 3:
            raise RuntimeError("boom at step 3")
        return super().train_step(batch, step)

class WrongShape(ProtoNet):
    name = "wrong_shape"
    def predict(self, support_x, support_y, query_x, ways):
        return super().predict(support_x, support_y, query_x, ways)[:, :, :-1]

class NaNLoss(ProtoNet):
    name = "nan_loss"
    def train_step(self, batch, step):
        return float("nan")

class Slow(ProtoNet):
    name = "slow"
    def train_step(self, batch, step):
        while True:          # never finishes: only --run-timeout stops it
            time.sleep(0.05)

class BadClusters(ProtoNet):
    name = "bad_clusters"
    def cluster(self, x, k):
        return torch.zeros(x.shape[0], x.shape[1] + 1, dtype=torch.int64)

class NearestSeed(ProtoNet):
    """Own clustering: each image joins the nearest of the task's first k images (in embedding space)."""
    name = "nearest_seed"
    def cluster(self, x, k):
        t, m = x.shape[:2]
        z = self.embed(x.flatten(0, 1)).view(t, m, -1)
        return torch.cdist(z, z[:, :: m // k][:, :k]).argmin(-1)

@hookimpl
def metabench_algorithms():
    return [Exploding, WrongShape, NaNLoss, Slow, BadClusters, NearestSeed]
'''


SMALL = """
    name = "{name}"
    datasets = ["digits"]
    task_generators = ["oracle", "umtra"]
    algorithms = {algorithms}
    seeds = {seeds}
    [[protocols]]
    ways = 5
    shots = 1
    queries = 5
    [budget]
    steps = 5
    meta_batch = 2
    test_episodes = 20
    cluster_tasks = 5
    [options.protonet]
    hidden = 8
"""


def small_suite(path: Path, name: str, algorithms=("protonet",), seeds=(0,)) -> Path:
    return write_suite(path, SMALL.format(name=name, algorithms=json.dumps(list(algorithms)),
                                          seeds=json.dumps(list(seeds))))


def metrics_by_identity(folder: Path) -> dict[tuple, dict]:
    """Valid records' metrics keyed by what identifies a run apart from the suite name."""
    out = {}
    for p in sorted(folder.glob("*.json")):
        rec = read_record(p)
        c = rec["config"]
        out[(c["dataset"], c["task_generator"], c["algorithm"], c["seed"])] = scores(rec)
    return out


def scores(record: dict) -> list[dict]:
    """The numbers of a record's evaluations (their metrics; timings left out), for equality checks."""
    return [e["metrics"] for e in record["evaluations"]]


def make_record(run_id="r1", alg="protonet", seed=0, acc=0.9, ci=0.01, ways=5, shots=1, rate=10.0):
    """A current (v3) ok record with one evaluation: :func:`make_v2_record` migrated."""
    return migrate(make_v2_record(run_id, alg, seed, acc, ci, ways, shots, rate))


def make_v2_record(run_id="r1", alg="protonet", seed=0, acc=0.9, ci=0.01, ways=5, shots=1, rate=10.0):
    """An ok record in schema version 2 (metrics at the top, one test protocol), as committed results are."""
    return {
        "schema_version": 2, "run_id": run_id, "status": "ok",
        "config": {"suite": "s", "dataset": "omniglot", "task_generator": "oracle", "algorithm": alg,
                   "ways": ways, "shots": shots, "queries": 15, "train_ways": ways, "train_shots": shots,
                   "train_queries": 15, "seed": seed,
                   "budget": {"steps": 10, "meta_batch": 1, "test_episodes": 100}, "options": {}},
        "metrics": {"accuracy_mean": acc, "accuracy_ci95": ci, "test_episodes": 100,
                    "episode_correct": [round(acc * 75)] * 100, "episode_queries": 75},
        "speed": {"meta_train_tasks_per_s": rate, "eval_tasks_per_s": 2 * rate, "wall_s": 1.0,
                  "peak_mem_mb": 100.0},
        "environment": {"metabench": "0", "python": "3", "torch": "2", "device": "cpu"},
    }
