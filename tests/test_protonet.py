"""ProtoNet's prototype classifier against a brute-force computation."""
from __future__ import annotations

import torch

from metabench_plugins.algorithms.protonet import prototype_logits


def test_prototype_logits_match_brute_force():
    g = torch.Generator().manual_seed(0)
    zs, zq = torch.randn(3, 6, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    ys = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0], [0, 0, 0, 1, 2, 2]])
    got = prototype_logits(zs, ys, zq, 3)
    for t in range(3):
        for c in range(3):
            proto = zs[t][ys[t] == c].mean(0)
            assert torch.allclose(got[t, :, c], -((zq[t] - proto) ** 2).sum(-1), atol=1e-5)
