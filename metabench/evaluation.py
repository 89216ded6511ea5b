"""Few-shot evaluation on fixed, seeded test episodes: accuracy with a 95% confidence interval."""
from __future__ import annotations

import math

import torch

from metabench.contracts import Algorithm, LabeledSplit, PluginError
from metabench.episodes import EpisodeSampler, batch_from_indices
from metabench.seeding import make_generator


def fixed_episode_indices(split: LabeledSplit, ways: int, shots: int, queries: int, episodes: int,
                         seed: int) -> torch.Tensor:
    """Image indices ``[E, N, K+Q]`` of the test episodes. They depend only on the split, the protocol
    and ``seed``, so every algorithm and task generator is scored on the same episodes."""
    sampler = EpisodeSampler(split.images, split.labels, ways, shots, queries)
    return sampler.sample_indices(episodes, make_generator(seed, split.images.device))


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval, 1.96 * s / sqrt(n) (s: sample std)."""
    v = values.double()
    n = v.numel()
    std = float(v.std(unbiased=True)) if n > 1 else 0.0
    return float(v.mean()), 1.96 * std / math.sqrt(n)


def evaluate(algorithm: Algorithm, split: LabeledSplit, indices: torch.Tensor, shots: int,
             batch: int = 50, on_batch=None) -> torch.Tensor:
    """Per-episode query accuracy ``[E]`` of ``algorithm`` on the episodes ``indices``, ``batch`` at a time."""
    accs = []
    for start in range(0, indices.shape[0], batch):
        ep = batch_from_indices(split.images, indices[start:start + batch], shots)
        logits = algorithm.predict(ep.support_x, ep.support_y, ep.query_x, ep.ways)
        want = (ep.tasks, ep.query_y.shape[1], ep.ways)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != want:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise PluginError(f"{algorithm.name}: predict() must return logits of shape {want}, got {got}")
        if not torch.isfinite(logits).all():
            raise PluginError(f"{algorithm.name}: predict() returned non-finite logits")
        accs.append((logits.argmax(-1) == ep.query_y).double().mean(1).cpu())
        if on_batch is not None:
            on_batch(ep.tasks)
    return torch.cat(accs)
