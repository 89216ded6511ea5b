"""Test-time adaptation of a whole evaluation batch at once (paths ``batched`` and ``grouped``) predicts what
adapting episode by episode predicts, in float64, for every gradient-based learner; and builds no graph."""
from __future__ import annotations

import pytest
import torch

from metabench import RunContext
from metabench.toolkit import inner_loop
from metabench_plugins.algorithms.anil import ANIL
from metabench_plugins.algorithms.fomaml import FOMAML
from metabench_plugins.algorithms.maml import MAML
from metabench_plugins.algorithms.metasgd import MetaSGD
from metabench_plugins.algorithms.reptile import Reptile

T, N, K, Q, SHAPE = 4, 3, 2, 3, (1, 8, 8)

pytestmark = pytest.mark.usefixtures("one_thread")


def _episodes():
    g = torch.Generator().manual_seed(5)
    sx, qx = torch.rand(T, N * K, *SHAPE, generator=g), torch.rand(T, N * Q, *SHAPE, generator=g)
    return sx, torch.arange(N).repeat_interleave(K).repeat(T, 1), qx


def _alg(cls, path: str):
    extra = {"test_inner_steps": 6, "test_inner_batch": 3} if cls is Reptile else {"test_inner_steps": 3}
    alg = cls()
    alg.setup(RunContext(torch.device("cpu"), 0, N, K, Q, SHAPE,
                         cls.resolve_options({"path": path, "hidden": 8, **extra})))
    return alg


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("cls", [MAML, FOMAML, MetaSGD, ANIL, Reptile])
def test_batched_adaptation_predicts_the_per_episode_logits(f64, cls, fold, chunked, monkeypatch):
    # after adapting together, the query sets run per episode (CPU's rule) or folded into one pass (CUDA's)
    monkeypatch.setattr(inner_loop, "fold_queries", lambda device: fold)
    if chunked:  # a pixel budget of 3 episodes' inner steps: the 4 episodes are adapted 3, then 1
        per_step = (3 if cls is Reptile else N * K) * SHAPE[1] * SHAPE[2]
        monkeypatch.setattr(inner_loop, "PREDICT_MAX_PIXELS", 3 * per_step + per_step // 2)
    sx, sy, qx = _episodes()
    ref_alg = _alg(cls, "loop")
    ref = ref_alg.predict(sx, sy, qx, N)  # the loop adapts episode by episode
    if cls is not Reptile:  # Reptile's minibatches depend on how many episodes one call draws for
        one_by_one = torch.cat([ref_alg.predict(sx[t:t + 1], sy[t:t + 1], qx[t:t + 1], N) for t in range(T)])
        torch.testing.assert_close(one_by_one, ref, rtol=0, atol=0)
    for path in ("batched", "grouped"):
        alg = _alg(cls, path)
        with torch.no_grad():
            got = alg.predict(sx, sy, qx, N)
        assert got.shape == (T, N * Q, N) and not got.requires_grad
        assert all(p.grad is None for p in alg.params.values())
        # Adam (Reptile) turns the round-off left in the exactly-zero gradients of the conv biases before
        # batch norm into steps up to lr/eps = 1e5 times larger: agreement to 1e-7 of the scale, not 1e-10
        tol = 1e-7 if cls is Reptile else 1e-10
        torch.testing.assert_close(got, ref, rtol=0, atol=tol * float(ref.abs().max()))
        assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_predict_chunk_bounds_the_support_pixels_of_an_inner_step():
    def rows(*shape):  # shapes only
        return torch.empty(shape, device="meta")
    budget = inner_loop.PREDICT_MAX_PIXELS
    assert inner_loop.predict_chunk(rows(50, 5, 1, 28, 28), False) == budget // (5 * 28 * 28)
    # with minibatches (Reptile) a step sees B images, not the steps x B drawn
    assert inner_loop.predict_chunk(rows(50, 50, 5, 1, 28, 28), True) == budget // (5 * 28 * 28)
    # over budget: the floor
    assert inner_loop.predict_chunk(rows(50, 25, 3, 84, 84), False) == inner_loop.PREDICT_MIN_EPISODES == 2
    assert inner_loop.predict_chunk(rows(3, 1, 1, 4, 4), False) >= 3
