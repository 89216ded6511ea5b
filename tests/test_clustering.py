"""Clustering evaluation: NMI / ARI / Hungarian accuracy of k-means on embedded tasks."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from metabench.engine.clustering import cluster_tasks, matched_accuracy


def test_matched_accuracy_is_the_best_relabelling():
    rng = np.random.default_rng(0)
    for _ in range(20):
        true, pred = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
        brute = max(np.mean(np.array(perm)[pred] == true) for perm in itertools.permutations(range(4)))
        assert matched_accuracy(true, pred) == pytest.approx(brute)


def test_separated_tasks_score_one_and_noise_scores_near_zero():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(5).repeat_interleave(16).expand(30, -1)
    centres = torch.randn(30, 5, 8, generator=g) * 20
    separated = centres.gather(1, labels.unsqueeze(-1).expand(-1, -1, 8)) + torch.randn(30, 80, 8, generator=g)
    s = cluster_tasks(separated, labels, 5, seed=1)
    assert s.shape == (30, 3) and torch.allclose(s, torch.ones_like(s))
    noise = cluster_tasks(torch.randn(30, 80, 8, generator=g), labels, 5, seed=1)
    nmi, ari, acc = noise.mean(0).tolist()
    assert nmi < 0.15 and abs(ari) < 0.05 and acc < 0.45


def test_same_seed_same_clusters():
    g = torch.Generator().manual_seed(3)
    feats, labels = torch.randn(10, 40, 4, generator=g), torch.arange(4).repeat_interleave(10).expand(10, -1)
    assert torch.equal(cluster_tasks(feats, labels, 4, seed=7), cluster_tasks(feats, labels, 4, seed=7))
