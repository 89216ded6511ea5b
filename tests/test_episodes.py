"""The episode sampler and the fixed test episodes."""
from __future__ import annotations

import pytest
import torch

from metabench.contracts import LabeledSplit, PluginError
from metabench.toolkit.episodes import EpisodeSampler
from metabench.engine.evaluation import fixed_episode_indices, mean_ci95
from metabench.seeding import derive_seed, make_generator


def _toy(counts):
    labels = torch.cat([torch.full((c,), 10 * i) for i, c in enumerate(counts)])  # sparse class ids
    images = torch.arange(labels.numel(), dtype=torch.int64).to(torch.uint8).view(-1, 1, 1, 1)
    return images, labels


@pytest.mark.parametrize("counts", [[20] * 12, [5, 40, 7, 30, 9, 6, 100, 8]])
def test_meta_batch_shapes_classes_and_disjointness(counts):
    images, labels = _toy(counts)
    s = EpisodeSampler(images, labels, ways=4, shots=2, queries=3)
    idx = s.sample_indices(64, make_generator(1))
    assert idx.shape == (64, 4, 5)
    cls = labels[idx]
    assert (cls == cls[:, :, :1]).all(), "every member of a row belongs to one class"
    for t in range(64):
        assert len(set(cls[t, :, 0].tolist())) == 4, "N distinct classes per task"
        assert len(set(idx[t].flatten().tolist())) == 20, "no image twice in a task"
    batch = s.sample(8, make_generator(1))
    assert batch.support_x.shape == (8, 8, 1, 1, 1) and batch.query_x.shape == (8, 12, 1, 1, 1)
    assert batch.support_x.dtype == torch.float32 and float(batch.support_x.max()) <= 1.0
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert batch.query_y[0].tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    batch.check("toy", 8, 4, 2, 3, (1, 1, 1))


def test_rare_classes_are_left_out_and_too_few_classes_is_an_error():
    images, labels = _toy([3, 20, 20, 2])
    s = EpisodeSampler(images, labels, ways=2, shots=1, queries=3)
    assert s.num_classes == 2
    assert set(labels[s.sample_indices(20, make_generator(0))].unique().tolist()) == {10, 20}
    with pytest.raises(PluginError, match="only 2 classes"):
        EpisodeSampler(images, labels, ways=3, shots=1, queries=3)


def test_every_class_and_member_gets_sampled_roughly_uniformly():
    images, labels = _toy([30, 10, 50, 20, 40])
    s = EpisodeSampler(images, labels, ways=2, shots=1, queries=1)
    idx = s.sample_indices(20000, make_generator(3))
    per_class = torch.bincount(labels[idx[:, :, 0]].flatten() // 10, minlength=5).double()
    assert (per_class / per_class.sum() - 0.2).abs().max() < 0.02
    hits = torch.bincount(idx.flatten(), minlength=150)
    assert (hits > 0).all()


def test_same_seed_same_episodes_other_seed_other_episodes():
    images, labels = _toy([20] * 30)
    split = LabeledSplit(images, labels)
    a = fixed_episode_indices(split, 5, 1, 15, 100, derive_seed("t", 0))
    b = fixed_episode_indices(split, 5, 1, 15, 100, derive_seed("t", 0))
    c = fixed_episode_indices(split, 5, 1, 15, 100, derive_seed("t", 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mean_ci95_is_196_standard_errors():
    v = torch.tensor([0.5, 0.7, 0.9, 0.6])
    mean, ci = mean_ci95(v)
    assert mean == pytest.approx(0.675)
    assert ci == pytest.approx(1.96 * float(v.double().std()) / 2)


def test_malformed_generator_output_is_named():
    images, labels = _toy([20] * 6)
    batch = EpisodeSampler(images, labels, 3, 1, 2).sample(4, make_generator(0))
    batch.query_y = batch.query_y[:, :-1]
    with pytest.raises(PluginError, match=r"mygen: query_y should have shape \(4, 6\)"):
        batch.check("mygen", 4, 3, 1, 2, (1, 1, 1))


class _PixelPrototypes:
    """Nearest class mean on raw pixels; notes the tasks of every call."""

    name = "pixel_prototypes"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, support_x, support_y, query_x, ways):
        self.calls.append(support_x.shape[0])
        onehot = torch.nn.functional.one_hot(support_y, ways).float()
        protos = onehot.transpose(1, 2) @ support_x.flatten(2) / onehot.sum(1).unsqueeze(-1)
        return -torch.cdist(query_x.flatten(2), protos)

    def embed(self, x):
        self.calls.append(x.shape[0])
        return x.flatten(1)[:, :5]


def test_evaluation_calls_are_capped_by_input_size_without_changing_scores(monkeypatch):
    from metabench.engine import evaluation

    g = make_generator(3)
    labels = torch.arange(12).repeat_interleave(8)
    images = (torch.rand(96, 1, 6, 6, generator=g) * 40 + labels.view(-1, 1, 1, 1) * 18).to(torch.uint8)
    split = LabeledSplit(images, labels)
    idx = evaluation.fixed_episode_indices(split, 5, 2, 3, 30, seed=1)
    whole = _PixelPrototypes()
    accs = evaluation.evaluate(whole, split, idx, shots=2, batch=50)
    feats = evaluation.embed_tasks(whole, split, idx, batch=50)
    assert whole.calls == [30, 30 * 25]
    monkeypatch.setattr(evaluation, "MAX_CALL_VALUES", 7 * 25 * 36)  # 7 tasks of 25 images of 36 values
    capped = _PixelPrototypes()
    assert torch.equal(evaluation.evaluate(capped, split, idx, shots=2, batch=50), accs)
    assert torch.equal(evaluation.embed_tasks(capped, split, idx, batch=50), feats)
    assert capped.calls == [7, 7, 7, 7, 2] + [7 * 25] * 4 + [2 * 25]
    assert 0.3 < float(accs.mean()) <= 1.0
