"""Unsupervised task generators (CACTUs, UMTRA, rotation) and their helpers (augment, kmeans, autoencoder)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from metabench import PluginError, RunContext, UnlabeledSplit
from metabench.toolkit.augment import PROFILES, augment, auto_profile, sample_distinct
from metabench.toolkit.autoencoder import encode, train_autoencoder
from metabench.toolkit.embeddings import fit_embedder
from metabench.toolkit.episodes import to_float
from metabench.toolkit.kmeans import kmeans
from metabench.engine.registry import discover
from metabench_plugins.datasets.digits import Digits
from metabench_plugins.datasets.mnist import MNIST
from metabench_plugins.datasets.omniglot import Omniglot
from metabench_plugins.generators.cactus import Cactus
from metabench_plugins.generators.rotation import Rotation
from metabench_plugins.generators.umtra import Umtra

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def found_in(x: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """For each row of ``x`` [A, D], whether it equals some row of ``pool`` [B, D] exactly."""
    return (x.unsqueeze(1) == pool.unsqueeze(0)).all(-1).any(-1)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """scikit-learn's 1797 digits as uint8 [M, 1, 8, 8]."""
    px = torch.from_numpy(load_digits().images)
    return torch.round(px * 255 / 16).to(torch.uint8).unsqueeze(1)


@pytest.fixture(scope="module")
def digit_labels() -> np.ndarray:
    return load_digits().target


def make(cls, images: torch.Tensor, ways=5, shots=1, queries=3, cache_dir=None, seed=0, **options):
    """A generator of ``cls`` set up on ``images`` with ``options``."""
    ctx = RunContext(CPU, seed, ways, shots, queries, tuple(images.shape[1:]), cls.resolve_options(options),
                     cache_dir)
    g = cls()
    g.setup(UnlabeledSplit(images), ctx)
    return g


def assert_same(a, b):
    for key in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key


# --------------------------------------------------------------------------------------------- augment


@pytest.mark.parametrize("profile", sorted(set(PROFILES) - {"none"}))
def test_augment_shape_range_determinism_and_change(profile):
    c = 3 if profile == "natural" else 1
    x = torch.rand(16, c, 28, 28, generator=gen(0))
    y1, y2, y3 = augment(x, gen(1), profile), augment(x, gen(1), profile), augment(x, gen(2), profile)
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert 0.0 <= float(y1.min()) and float(y1.max()) <= 1.0
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)
    assert (y1 - x).abs().flatten(1).mean(1).min() > 0.01  # every image changed


def test_augment_identity_and_components():
    x = torch.rand(8, 1, 8, 8, generator=gen(0))
    assert torch.equal(augment(x, gen(0), "none"), x)
    # dropout only: each pixel kept exactly or zeroed, about the requested fraction zeroed
    y = augment(x, gen(0), "none", dropout=0.5)
    assert torch.all((y == x) | (y == 0))
    assert 0.35 < float((y == 0).float().mean()) < 0.65
    # shift only moves a single lit pixel by at most shift * side
    z = torch.zeros(64, 1, 28, 28)
    z[:, 0, 14, 14] = 1.0
    w = augment(z, gen(3), "none", shift=4 / 28)
    grid = torch.arange(28.0)
    cy = (w.sum(3).squeeze(1) * grid).sum(1) / w.sum((1, 2, 3))
    cx = (w.sum(2).squeeze(1) * grid).sum(1) / w.sum((1, 2, 3))
    assert float((cx - 14).abs().max()) <= 4.01 and float((cy - 14).abs().max()) <= 4.01
    assert float((cx - 14).abs().max()) > 2.0  # and it does move
    with pytest.raises(ValueError):
        augment(x, gen(0), "nope")


def test_auto_profile_prefers_the_datasets_declaration_then_the_image_shape():
    assert auto_profile((1, 28, 28), "handwriting") == "handwriting" and auto_profile((1, 8, 8), "strokes") == "strokes"
    assert auto_profile((1, 28, 28)) == "strokes" and auto_profile((1, 8, 8), "no_such_profile") == "small_handwriting"
    assert auto_profile((3, 32, 32)) == "natural"
    declared = {cls.name: cls.augmentation for cls in (Omniglot, MNIST, Digits)}
    assert declared == {"omniglot": "strokes", "mnist": "handwriting", "digits": "small_handwriting"}


def test_sample_distinct_is_distinct_uniform_and_deterministic():
    counts = torch.tensor([5, 7, 1000, 82240]).repeat(500)
    s = sample_distinct(counts, 5, gen(0))
    assert s.shape == (2000, 5)
    assert torch.all(s >= 0) and torch.all(s < counts[:, None])
    assert torch.all(s.sort(1).values.diff(dim=1) > 0)
    assert torch.equal(s, sample_distinct(counts, 5, gen(0)))
    # choosing 2 of 7 many times: every value (and every position) about equally often
    t = sample_distinct(torch.full((70000,), 7), 2, gen(1))
    for col in range(2):
        freq = torch.bincount(t[:, col], minlength=7).float() / 70000
        assert float((freq - 1 / 7).abs().max()) < 0.01


# ---------------------------------------------------------------------------------------------- kmeans


def test_kmeans_matches_sklearn_on_blobs():
    x, y = make_blobs(3000, 16, centers=12, cluster_std=1.0, random_state=0)
    x = x.astype(np.float32)
    res = kmeans(torch.from_numpy(x), 12, gen(0), n_init=3)
    ref = KMeans(12, n_init=3, random_state=0).fit(x)
    assert res.labels.shape == (3000,) and res.centers.shape == (12, 16) and res.inertia.shape == ()
    assert abs(float(res.inertia) - ref.inertia_) / ref.inertia_ < 0.02
    assert adjusted_rand_score(y, res.labels.numpy()) > 0.99
    # inertia is the sum of squared distances to the assigned centres
    direct = ((torch.from_numpy(x) - res.centers[res.labels]) ** 2).sum()
    assert torch.allclose(direct, res.inertia, rtol=1e-3)


def test_kmeans_batched_equals_per_problem():
    xs = torch.stack([torch.from_numpy(make_blobs(400, 8, centers=6, random_state=s)[0].astype(np.float32))
                      for s in range(5)])
    init = xs[:, :6].clone()  # same starting centres both ways
    batched = kmeans(xs, 6, gen(0), init=init)
    for b in range(5):
        single = kmeans(xs[b], 6, gen(0), init=init[b])
        assert torch.equal(batched.labels[b], single.labels)
        assert torch.allclose(batched.centers[b], single.centers, atol=1e-4)
        assert torch.allclose(batched.inertia[b], single.inertia, rtol=1e-5)
    # with k-means++ every problem of a batch is solved as well as scikit-learn solves it alone
    pp = kmeans(xs, 6, gen(1), n_init=2)
    for b in range(5):
        ref = KMeans(6, n_init=2, random_state=0).fit(xs[b].numpy()).inertia_
        assert float(pp.inertia[b]) <= ref * 1.02


def test_kmeans_reseeds_empty_clusters_and_is_seeded():
    x = torch.arange(10.0).repeat_interleave(30).unsqueeze(1)  # 10 distinct values, 30 copies each
    res = kmeans(x, 10, gen(0), init="random")  # random init picks duplicates -> empty clusters
    assert torch.unique(res.labels).numel() == 10 and float(res.inertia) == 0.0
    a = kmeans(x + torch.rand(300, 1, generator=gen(5)), 7, gen(3))
    b = kmeans(x + torch.rand(300, 1, generator=gen(5)), 7, gen(3))
    assert torch.equal(a.labels, b.labels)


# ------------------------------------------------------------------------------------------ autoencoder


def test_autoencoder_trains_encodes_and_caches(digits, digit_labels, tmp_path):
    enc = train_autoencoder(digits, CPU, seed=0, steps=30, dim=16)
    z = encode(enc, digits, batch_size=500)
    assert z.shape == (1797, 16) and torch.isfinite(z).all()
    assert torch.equal(z, encode(train_autoencoder(digits, CPU, seed=0, steps=30, dim=16), digits))
    c1 = fit_embedder("autoencoder", digits, 0, 16, tmp_path, autoencoder_steps=30)(to_float(digits))
    assert torch.equal(c1, z) and len(list(tmp_path.glob("autoencoder-*.pt"))) == 1
    again = fit_embedder("autoencoder", digits, 0, 16, tmp_path, autoencoder_steps=30)  # from the cache
    assert torch.equal(again(to_float(digits)), z)

    def nn_accuracy(steps: int) -> float:  # leave-one-out 1-NN digit accuracy of the embedding
        e = encode(train_autoencoder(digits, CPU, seed=0, steps=steps, dim=16), digits)
        d = torch.cdist(e, e).fill_diagonal_(float("inf"))
        y = torch.from_numpy(digit_labels)
        return float((y[d.argmin(1)] == y).float().mean())

    assert nn_accuracy(300) > nn_accuracy(0) + 0.02  # training makes the code more informative


# ---------------------------------------------------------------------------------------------- cactus


@pytest.fixture(scope="module")
def cactus_digits(digits, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cactus")
    return make(Cactus, digits, cache_dir=cache, partitions=8, kmeans_iters=30), cache


def test_cactus_batches_and_determinism(cactus_digits):
    c, _ = cactus_digits
    b = c.sample(32, gen(0)).check("cactus", 32, 5, 1, 3, (1, 8, 8))
    assert float(b.support_x.min()) >= 0 and float(b.support_x.max()) <= 1
    assert_same(b, c.sample(32, gen(0)))
    assert not torch.equal(b.query_x, c.sample(32, gen(1)).query_x)


def test_cactus_partitions(cactus_digits, digit_labels):
    c, _ = cactus_digits
    k = c.clusters
    assert k == 1797 // (4 * 4)  # auto: M // (4 (K+Q)) on a small set
    assert c.partition_labels.shape == (8, 1797) and c.num_partitions == 8
    assert int(c.partition_labels.max()) < k
    assert torch.all(c.counts.sum(1) <= 1797)
    assert torch.all((c.counts == 0) | (c.counts >= 4))  # clusters under K+Q members are dropped
    used = torch.stack([torch.bincount(p, minlength=k) > 0 for p in c.partition_labels])
    assert torch.all(used.sum(1) > 0.8 * k)
    # random rescaling makes the partitions differ from one another
    ari = [adjusted_rand_score(c.partition_labels[0], c.partition_labels[i]) for i in range(1, 8)]
    assert max(ari) < 0.95
    # and they still follow the digit classes
    assert np.mean([normalized_mutual_info_score(digit_labels, p) for p in c.partition_labels]) > 0.6


def test_cactus_classes_are_clusters_of_the_chosen_partition(cactus_digits):
    c, _ = cactus_digits
    idx, part = c.sample_indices(200, gen(4))
    assert idx.shape == (200, 5, 4) and part.shape == (200,)
    lab = c.partition_labels[part[:, None, None], idx]                       # cluster of every image
    assert torch.all(lab == lab[:, :, :1])                                   # one cluster per class
    first = lab[:, :, 0]
    assert torch.all(first.sort(1).values.diff(dim=1) > 0)                   # N distinct clusters
    assert torch.all(idx.sort(2).values.diff(dim=2) > 0)                     # K+Q distinct images
    assert torch.unique(part).numel() == 8                                   # all partitions used


def test_cactus_cache_reused(digits, cactus_digits):
    c, cache = cactus_digits
    assert len(list(cache.glob("cactus-*.pt"))) == 1
    again = make(Cactus, digits, cache_dir=cache, partitions=8, kmeans_iters=30)
    assert torch.equal(again.partition_labels, c.partition_labels)
    other = make(Cactus, digits, cache_dir=cache, partitions=8, kmeans_iters=30, seed=1)
    assert not torch.equal(other.partition_labels, c.partition_labels)
    assert len(list(cache.glob("cactus-*.pt"))) == 2


def test_cactus_recovers_well_separated_groups():
    g = gen(0)
    protos = (torch.rand(8, 1, 10, 10, generator=g) < 0.5).float()
    truth = torch.arange(8).repeat_interleave(60)
    noise = 0.1 * torch.randn(480, 1, 10, 10, generator=g)
    images = ((protos[truth] * 0.8 + 0.1 + noise).clamp(0, 1) * 255).to(torch.uint8)
    c = make(Cactus, images, ways=3, shots=1, queries=2, embedding="pixels", partitions=6, clusters=8)
    nmis = [normalized_mutual_info_score(truth, p) for p in c.partition_labels]
    assert min(nmis) > 0.95
    idx, _ = c.sample_indices(100, gen(1))
    classes = truth[idx]
    assert float((classes == classes[:, :, :1]).float().mean()) > 0.98      # tasks follow the true groups


def test_cactus_embeddings_and_errors(digits):
    for emb in ("pixels", "autoencoder"):
        c = make(Cactus, digits, embedding=emb, partitions=2, kmeans_iters=10, autoencoder_steps=30)
        c.sample(4, gen(0)).check("cactus", 4, 5, 1, 3, (1, 8, 8))
    with pytest.raises(PluginError):
        make(Cactus, digits, embedding="bigan")
    with pytest.raises(PluginError):  # every cluster too small for 20 images per class
        make(Cactus, digits[:300], queries=19, partitions=2, clusters=100)


# ----------------------------------------------------------------------------------------------- umtra


def test_umtra_batches_determinism_and_distinct_sources(digits):
    u = make(Umtra, digits, ways=5, shots=1, queries=3)
    assert u.profile == "small_handwriting"
    b = u.sample(32, gen(0)).check("umtra", 32, 5, 1, 3, (1, 8, 8))
    assert_same(b, u.sample(32, gen(0)))
    assert not torch.equal(b.support_x, u.sample(32, gen(1)).support_x)
    src = u.sample_indices(500, gen(2))
    assert torch.all(src.sort(1).values.diff(dim=1) > 0)  # N distinct images per task
    # support images are the source images themselves, unaugmented
    assert torch.all(found_in(b.support_x.flatten(0, 1).flatten(1), to_float(digits).flatten(1)))


def test_umtra_queries_are_augmented_copies_of_their_support(digits):
    u = make(Umtra, digits, ways=5, shots=1, queries=3)
    b = u.sample(64, gen(0))
    sup = b.support_x.flatten(2)                                        # [T, 5, D]
    qry = b.query_x.flatten(2)                                          # [T, 15, D]
    d = torch.cdist(qry, sup)                                           # [T, 15, 5]
    assert torch.all(d.min(2).values > 0)                               # not identical
    own = d.gather(2, b.query_y.unsqueeze(2)).squeeze(2)
    assert float((d.argmin(2) == b.query_y).float().mean()) > 0.6       # nearest: own support (chance 0.2)
    others = (d.sum(2) - own) / 4
    assert float(own.mean()) < 0.85 * float(others.mean())
    plain = make(Umtra, digits, ways=5, shots=2, queries=2, augmentation="none").sample(8, gen(0))
    sx, qx = plain.support_x.view(8, 5, 2, -1), plain.query_x.view(8, 5, 2, -1)
    assert torch.equal(sx[:, :, 1], sx[:, :, 0]) and torch.equal(qx[:, :, 0], sx[:, :, 0])
    shot3 = make(Umtra, digits, ways=5, shots=3, queries=2).sample(8, gen(0))
    s3 = shot3.support_x.view(8, 5, 3, -1)
    assert not torch.equal(s3[:, :, 1], s3[:, :, 0])                     # extra shots are augmented
    with pytest.raises(PluginError):
        make(Umtra, digits, augmentation="cutout")


# -------------------------------------------------------------------------------------------- rotation


def test_rotation_classes_are_rotations(digits):
    r = make(Rotation, digits, ways=4, shots=1, queries=2)
    b = r.sample(16, gen(0)).check("rotation", 16, 4, 1, 2, (1, 8, 8))
    assert_same(b, r.sample(16, gen(0)))
    assert not torch.equal(b.query_x, r.sample(16, gen(1)).query_x)
    pool = to_float(digits).flatten(1)
    for x, y in ((b.support_x, b.support_y), (b.query_x, b.query_y)):
        undone = torch.stack([torch.rot90(img, -int(c), dims=(-2, -1)) for img, c in
                              zip(x.reshape(-1, 1, 8, 8), y.reshape(-1))])
        assert torch.all(found_in(undone.flatten(1), pool))                  # rot c of a real image
    # shared images: class c holds the class-0 images rotated by c * 90 degrees
    q = b.query_x.view(16, 4, 2, 1, 8, 8)
    for c in range(4):
        assert torch.equal(q[:, c], torch.rot90(q[:, 0], c, dims=(-2, -1)))


def test_rotation_flips_shuffle_and_limits(digits):
    r = make(Rotation, digits, ways=8, shots=1, queries=1, shared_images=False)
    b = r.sample(8, gen(0)).check("rotation", 8, 8, 1, 1, (1, 8, 8))
    q = b.query_x.view(8, 8, 1, 8, 8)
    assert not torch.equal(q[:, 5], torch.rot90(q[:, 0], 1, dims=(-2, -1)))  # distinct images per class
    unflip = torch.rot90(q[:, 5], -1, dims=(-2, -1)).flip(-1)                 # class 5 = flip then rot90
    assert torch.all(found_in(unflip.flatten(1), to_float(digits).flatten(1)))
    sh = make(Rotation, digits, ways=3, shots=1, queries=1, shuffle_labels=True)
    which = sh.sample_transforms(300, gen(0))
    assert torch.all(which.sort(1).values.diff(dim=1) > 0) and int(which.max()) == 3
    sb = sh.sample(4, gen(3))
    w = sh.sample_transforms(4, gen(3))  # the draws sample() made first
    inverse = sh.maps.argsort(1)
    for x in (sb.support_x, sb.query_x):
        flat = x.view(4, 3, 64)
        base = torch.stack([flat[t, c, inverse[w[t, c]]] for t in range(4) for c in range(3)]).view(4, 3, 64)
        assert torch.equal(base, base[:, :1].expand(-1, 3, -1))  # one image under each class's transform
    with pytest.raises(PluginError):
        make(Rotation, digits, ways=9)
    with pytest.raises(PluginError):
        make(Rotation, torch.zeros(50, 1, 8, 6, dtype=torch.uint8))


# --------------------------------------------------------------------------------------------- registry


def test_generators_are_registered():
    reg = discover()
    for name in ("cactus", "umtra", "rotation"):
        info = reg.get("task_generator", name)
        assert info.cls.uses_labels is False and info.cls.paper
