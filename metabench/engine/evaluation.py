"""Few-shot evaluation on fixed, seeded test episodes: accuracy with a 95% confidence interval."""
from __future__ import annotations

import math

import torch

from metabench.contracts import Algorithm, EpisodeBatch, LabeledSplit, PluginError
from metabench.engine.episode_sets import stack_episodes
from metabench.toolkit.episodes import EpisodeSampler, batch_from_indices, to_float
from metabench.seeding import make_generator

#: At most this many input values (images x channels x height x width) go into one ``predict`` / ``embed`` /
#: ``cluster`` call: ``eval_batch`` tasks of 20-way 5-shot 15-query Omniglot (400 images each) made one Conv-4
#: forward of 20,000 images, 8.7 GB at its peak; capped, 10 tasks (about 2 GB). Splitting the batch does not
#: change a prediction (each test task is predicted on its own; Conv-4 in eval mode gives the same bits at any
#: batch size on CPU).
MAX_CALL_VALUES = 2 ** 22


def tasks_per_call(batch: int, images_per_task: int, image_numel: int) -> int:
    """Tasks per evaluation call: ``batch``, fewer where they would exceed :data:`MAX_CALL_VALUES`, at least 1."""
    return max(1, min(batch, MAX_CALL_VALUES // max(1, images_per_task * image_numel)))


def _per_call(batch: int, indices: torch.Tensor, split: LabeledSplit) -> int:
    """:func:`tasks_per_call` for the episodes ``indices`` ``[E, N, K+Q]`` of ``split``."""
    return tasks_per_call(batch, indices.shape[1:].numel(), split.images.shape[1:].numel())


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
    """Per-episode query accuracy ``[E]`` of ``algorithm`` on the episodes ``indices``, ``batch`` at a time
    (fewer where :func:`tasks_per_call` says so)."""
    accs = []
    batch = _per_call(batch, indices, split)
    for start in range(0, indices.shape[0], batch):
        ep = batch_from_indices(split.images, indices[start:start + batch], shots)
        accs.append(_accuracy(algorithm, ep))
        if on_batch is not None:
            on_batch(ep.tasks)
    return torch.cat(accs)


def _accuracy(algorithm: Algorithm, ep: EpisodeBatch) -> torch.Tensor:
    """Per-task query accuracy ``[T]`` (CPU, float64) of ``algorithm.predict`` on ``ep``, its output checked."""
    logits = algorithm.predict(ep.support_x, ep.support_y, ep.query_x, ep.ways)
    want = (ep.tasks, ep.query_y.shape[1], ep.ways)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != want:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise PluginError(f"{algorithm.name}: predict() must return logits of shape {want}, got {got}")
    if not torch.isfinite(logits).all():
        raise PluginError(f"{algorithm.name}: predict() returned non-finite logits")
    return (logits.argmax(-1) == ep.query_y).double().mean(1).cpu()


def evaluate_episodes(algorithm: Algorithm, episodes: list, batch: int = 50,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Per-episode query accuracy ``[E]`` of ``algorithm`` on a given episode set
    (:func:`metabench.engine.episode_sets.load_episodes`), in the set's order; episodes of one shape are
    predicted ``batch`` at a time (fewer where :func:`tasks_per_call` says so)."""
    accs = torch.zeros(len(episodes), dtype=torch.float64)
    for positions, ep in stack_episodes(episodes, batch=batch, device=device, cap=tasks_per_call):
        accs[positions] = _accuracy(algorithm, ep)
    return accs


def cluster_own(algorithm: Algorithm, split: LabeledSplit, indices: torch.Tensor, k: int,
                batch: int = 50) -> torch.Tensor:
    """The algorithm's own cluster ids ``[E, N*(K+Q)]`` (:meth:`~metabench.contracts.Algorithm.cluster`) of
    the unlabeled images of the episodes ``indices`` ``[E, N, K+Q]``, class-major as in :func:`embed_tasks`."""
    out = []
    for chunk in indices.split(_per_call(batch, indices, split)):
        e, m = chunk.shape[0], chunk.shape[1] * chunk.shape[2]
        ids = algorithm.cluster(to_float(split.images[chunk.reshape(e, m)]), k)
        if not isinstance(ids, torch.Tensor) or tuple(ids.shape) != (e, m) or ids.dtype != torch.int64:
            got = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise PluginError(f"{algorithm.name}: cluster() must return int64 cluster ids [{e}, {m}], got {got}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= k):
            raise PluginError(f"{algorithm.name}: cluster() returned ids outside 0..{k - 1}")
        out.append(ids.cpu())
    return torch.cat(out)


def embed_tasks(algorithm: Algorithm, split: LabeledSplit, indices: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """Features ``[E, N*(K+Q), D]`` of every image of the episodes ``indices`` ``[E, N, K+Q]``, from
    ``algorithm.embed``; the images of a task stay together, class-major."""
    out = []
    for chunk in indices.split(_per_call(batch, indices, split)):
        e, m = chunk.shape[0], chunk.shape[1] * chunk.shape[2]
        x = to_float(split.images[chunk.reshape(e, m)]).flatten(0, 1)
        z = algorithm.embed(x)
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != e * m:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise PluginError(f"{algorithm.name}: embed() must return features [{e * m}, D], got {got}")
        if not torch.isfinite(z).all():
            raise PluginError(f"{algorithm.name}: embed() returned non-finite features")
        out.append(z.detach().view(e, m, -1).cpu())
    return torch.cat(out)
