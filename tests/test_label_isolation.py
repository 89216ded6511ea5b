"""Unsupervised runs never see labels: permuting the meta-training labels leaves their records
bit-identical, while the supervised oracle's change. Run unsealed (``--no-seal``), where the labels lie in
the same process: the plugins themselves must not use them (a sealed worker never holds them at all)."""
from __future__ import annotations

import torch

from metabench.commands.cli import main
from metabench.contracts import ImageSet
from metabench.engine.records import read_record
from metabench_plugins.datasets.digits import Digits
from tests.helpers import scores, write_suite

SUITE = """
    name = "{name}"
    datasets = ["digits"]
    task_generators = ["oracle", "umtra", "cactus", "rotation", "jigsaw", "unlabeled"]
    algorithms = ["protonet", "ssl_protonet", "embed_knn", "embed_linear", "psco", "meta_gmvae"]
    [[protocols]]
    ways = 4
    shots = 1
    queries = 3
    [budget]
    steps = 6
    meta_batch = 2
    test_episodes = 30
    cluster_tasks = 10
    [options.protonet]
    hidden = 8
    [options.ssl_protonet]
    hidden = 8
    pretrain_steps = 3
    pretrain_ways = 10
    [options.cactus]
    embedding = "pixels"
    partitions = 3
    clusters = 12
    [options.embed_linear]
    steps = 20
    [options.psco]
    pretrain_steps = 3
    batch = 24
    queue_size = 64
    mlp_hidden = 32
    hidden = 8
    [options.meta_gmvae]
    train_steps = 2
    images_per_task = 30
    hidden = 16
    latent = 8
    [budget.psco]
    steps = 0
    meta_batch = 1
    [budget.meta_gmvae]
    steps = 0
    meta_batch = 1
    [[exclude]]
    task_generator = "unlabeled"
    algorithm = ["protonet", "ssl_protonet"]
    [[exclude]]
    task_generator = ["oracle", "umtra", "cactus", "rotation", "jigsaw"]
    algorithm = ["embed_knn", "embed_linear", "psco", "meta_gmvae"]
    [[exclude]]
    task_generator = ["oracle", "rotation", "jigsaw"]
    algorithm = "ssl_protonet"
"""


def _run(tmp_path, cache_dir, name):
    suite = write_suite(tmp_path / f"{name}.toml", SUITE.format(name=name))
    out = tmp_path / "results"
    assert main(["run", str(suite), "--results", str(out), "--cache-dir", str(cache_dir), "--no-seal"]) == 0
    recs = [read_record(p) for p in sorted((out / name).glob("*.json"))]
    return {(r["config"]["task_generator"], r["config"]["algorithm"]): scores(r) for r in recs}


def test_permuting_training_labels_changes_only_the_oracle(tmp_path, cache_dir, monkeypatch):
    plain = _run(tmp_path, cache_dir, "plain")
    assert set(plain) == {("oracle", "protonet"), ("umtra", "protonet"), ("cactus", "protonet"),
                          ("rotation", "protonet"), ("umtra", "ssl_protonet"), ("cactus", "ssl_protonet"),
                          ("jigsaw", "protonet"), ("unlabeled", "embed_knn"), ("unlabeled", "embed_linear"),
                          ("unlabeled", "psco"), ("unlabeled", "meta_gmvae")}
    original = Digits.load

    def permuted(self, ctx):
        data = original(self, ctx)
        labels = data.labels.clone()
        train = data.splits["train"]
        labels[train] = labels[train][torch.randperm(train.numel(), generator=torch.Generator().manual_seed(1))]
        return ImageSet(data.name, data.images, labels, data.splits, data.protocol)

    monkeypatch.setattr(Digits, "load", permuted)
    shuffled = _run(tmp_path, cache_dir, "shuffled")
    for key, metrics in plain.items():
        if key[0] == "oracle":
            assert shuffled[key][0]["accuracy_mean"] != metrics[0]["accuracy_mean"]
        else:
            assert shuffled[key] == metrics, key
