"""Small builders shared by the tests."""
from __future__ import annotations

import textwrap
from pathlib import Path


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

@hookimpl
def metabench_algorithms():
    return [Exploding, WrongShape, NaNLoss, Slow]
'''
