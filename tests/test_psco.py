"""PsCo: the Sinkhorn-Knopp assignment, the pseudo-task construction and a short seeded training run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metabench import Budget, RunContext
from metabench.contracts import DataContext
from metabench_plugins.algorithms.psco import PsCo, pseudo_shots, sinkhorn, supcon_loss
from metabench_plugins.datasets.digits import Digits

TINY = {"pretrain_steps": 4, "batch": 24, "queue_size": 64, "mlp_hidden": 32, "proj_dim": 16, "hidden": 8}


def naive_sinkhorn(s: np.ndarray, iters: int, eps: float) -> np.ndarray:
    """The paper's assignment written out: Q = exp(S / eps) / sum, then alternately every column (queue
    entry) rescaled to sum 1/M and every row (sample) to 1/N; finally scaled by N (rows sum to 1)."""
    n, m = s.shape
    q = np.exp(s / eps)
    q = q / q.sum()
    for _ in range(iters):
        for j in range(m):
            q[:, j] = q[:, j] / q[:, j].sum() / m
        for i in range(n):
            q[i, :] = q[i, :] / q[i, :].sum() / n
    return q * n


@pytest.mark.parametrize("iters", [1, 3, 10])
def test_sinkhorn_matches_the_naive_equation(iters):
    g = torch.Generator().manual_seed(0)
    s = torch.nn.functional.normalize(torch.randn(6, 11, generator=g, dtype=torch.float64), dim=1)
    got = sinkhorn(s, iters, 0.05)
    want = naive_sinkhorn(s.numpy().copy(), iters, 0.05)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.sum(1).numpy(), np.ones(6), rtol=1e-12)   # each sample: a distribution


def test_sinkhorn_marginals_converge_to_the_transport_polytope():
    g = torch.Generator().manual_seed(1)
    s = torch.rand(5, 20, generator=g, dtype=torch.float64)
    a = sinkhorn(s, 500, 0.5) / 5                      # undo the final scaling: A 1 = 1/N, A^T 1 = 1/M
    np.testing.assert_allclose(a.sum(1).numpy(), np.full(5, 1 / 5), rtol=1e-12)
    np.testing.assert_allclose(a.sum(0).numpy(), np.full(20, 1 / 20), rtol=1e-9)


def test_pseudo_shots_pick_the_top_k_assignments():
    a = torch.tensor([[0.10, 0.50, 0.05, 0.30, 0.05],
                      [0.40, 0.00, 0.35, 0.05, 0.20],
                      [0.01, 0.02, 0.03, 0.90, 0.04]])
    assert pseudo_shots(a, 1).tolist() == [[1], [0], [3]]
    assert pseudo_shots(a, 2).tolist() == [[1, 3], [0, 2], [3, 4]]


def test_supcon_loss_is_the_mean_over_shots_of_the_cross_entropy():
    g = torch.Generator().manual_seed(2)
    p, s = torch.randn(3, 4, generator=g), torch.randn(6, 4, generator=g)
    logits = p @ s.T / 0.5
    logp = logits.log_softmax(1)
    want = -torch.stack([logp[i, 2 * i:2 * i + 2].mean() for i in range(3)]).mean()
    torch.testing.assert_close(supcon_loss(p, s, 2, 0.5), want)


@pytest.fixture(scope="module")
def digits():
    return Digits().load(DataContext(Path("."), Path(".")))


def _run(digits, seed):
    train, test = digits.split("train"), digits.split("test")
    alg = PsCo()
    alg.setup(RunContext(torch.device("cpu"), seed, 5, 1, 3, digits.image_shape, PsCo.resolve_options(TINY),
                         unlabeled=train.unlabeled(), dataset="digits"))
    steps = []
    losses = alg.meta_train(iter(()), Budget(0, 1), on_step=lambda s, l: steps.append(s))
    x = test.images[:2 * 5 * 4].float().div(255).view(2, 20, *digits.image_shape)
    y = torch.arange(5).repeat(2, 1)
    return losses, steps, alg.predict(x[:, :5], y, x[:, 5:], 5), alg.embed(x[0])


def test_short_training_run_is_finite_shaped_and_seeded(digits):
    losses, steps, logits, z = _run(digits, 0)
    assert len(losses) == TINY["pretrain_steps"] and all(np.isfinite(losses)) and steps == []
    assert logits.shape == (2, 15, 5) and torch.isfinite(logits).all()
    assert z.shape[0] == 20 and z.dim() == 2
    again = _run(digits, 0)
    assert again[0] == losses and torch.equal(again[2], logits) and torch.equal(again[3], z)
    other = _run(digits, 1)
    assert not torch.equal(other[2], logits)
