"""Meta-GMVAE: its batched EM against the update equations written out naively, its own clustering on a
well-separated mixture, and a short seeded training on the scikit-learn digits."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import normalized_mutual_info_score

from metabench import Budget, DataContext, RunContext
from metabench.toolkit.episodes import EpisodeSampler
from metabench.seeding import make_generator
from metabench.toolkit.kmeans import kmeans
from metabench_plugins.algorithms.meta_gmvae import MetaGMVAE, e_step, em_fit, m_step
from metabench_plugins.datasets.digits import Digits


def naive_em_step(z, means, pinned=None, learn_weights=True):
    """One EM step per task with plain loops: E step under identity covariances and uniform weights, the
    first ``len(pinned)`` responsibilities replaced by ``pinned``; M step for means, weights, diagonal
    variances; then the posterior of every point under the new parameters."""
    t_, m_, d_ = z.shape
    k_ = means.shape[1]
    out = []
    for t in range(t_):
        resp = np.zeros((m_, k_))
        for i in range(m_):
            logp = [-0.5 * sum((z[t, i, d] - means[t, k, d]) ** 2 + math.log(2 * math.pi) for d in range(d_))
                    + math.log(1.0 / k_) for k in range(k_)]
            top = max(logp)
            w = [math.exp(v - top) for v in logp]
            resp[i] = [v / sum(w) for v in w]
        if pinned is not None:
            resp[:len(pinned[t])] = pinned[t]
        nk = resp.sum(0)
        mu = np.array([[sum(resp[i, k] * z[t, i, d] for i in range(m_)) / nk[k] for d in range(d_)]
                       for k in range(k_)])
        var = np.array([[sum(resp[i, k] * (z[t, i, d] - mu[k, d]) ** 2 for i in range(m_)) / nk[k]
                         for d in range(d_)] for k in range(k_)])
        pi = nk / m_ if learn_weights else np.full(k_, 1.0 / k_)
        post = np.zeros((m_, k_))
        for i in range(m_):
            logp = [math.log(pi[k]) + sum(-0.5 * (math.log(2 * math.pi * var[k, d])
                                                  + (z[t, i, d] - mu[k, d]) ** 2 / var[k, d]) for d in range(d_))
                    for k in range(k_)]
            top = max(logp)
            lse = top + math.log(sum(math.exp(v - top) for v in logp))
            post[i] = [v - lse for v in logp]
        out.append((mu, var, pi, post))
    return out


def test_one_em_step_matches_the_update_equations():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 9, 3, generator=g, dtype=torch.float64) * 2
    init = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    got = em_fit(z, 3, 1, init_means=init, diag=True)
    want = naive_em_step(z.numpy(), init.numpy())
    for t, (mu, var, pi, post) in enumerate(want):
        np.testing.assert_allclose(got.means[t].numpy(), mu, rtol=0, atol=1e-10)
        np.testing.assert_allclose(got.log_vars[t].exp().numpy(), var, rtol=0, atol=1e-10)
        np.testing.assert_allclose(got.log_weights[t].exp().numpy(), pi, rtol=0, atol=1e-10)
        np.testing.assert_allclose(got.log_resp[t].numpy(), post, rtol=0, atol=1e-10)
    # the pieces on their own
    resp = e_step(z, init).exp()
    means, _, log_w = m_step(z, resp)
    assert torch.allclose(resp.sum(-1), torch.ones(2, 9, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(means, got.means, atol=1e-12) and torch.allclose(log_w, got.log_weights, atol=1e-12)
    # tied: one variance per dimension, sum_k N_k var_k / M
    _, log_tied, _ = m_step(z, resp, diag=True, tied=True)
    nk = resp.sum(1)
    for t, (mu, var, pi, post) in enumerate(want):
        pooled = (nk[t].numpy()[:, None] * var).sum(0) / 9
        np.testing.assert_allclose(log_tied[t].exp().numpy(), np.broadcast_to(pooled, (3, 3)), rtol=0, atol=1e-10)


def test_semisupervised_em_step_pins_the_support():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 10, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([[0, 1, 2, 0], [2, 1, 0, 1]])
    fixed = F.one_hot(y, 3).double()
    got = em_fit(z, 3, 1, fixed_resp=fixed, learn_weights=False, diag=True)
    init = np.stack([[z[t, :4][y[t] == c].mean(0).numpy() for c in range(3)] for t in range(2)])
    want = naive_em_step(z.numpy(), init, pinned=fixed.numpy(), learn_weights=False)
    for t, (mu, var, pi, post) in enumerate(want):
        np.testing.assert_allclose(got.means[t].numpy(), mu, rtol=0, atol=1e-10)
        np.testing.assert_allclose(got.log_vars[t].exp().numpy(), var, rtol=0, atol=1e-10)
        np.testing.assert_allclose(got.log_weights[t].exp().numpy(), pi, rtol=0, atol=1e-10)
        np.testing.assert_allclose(got.log_resp[t].numpy(), post, rtol=0, atol=1e-10)


def _digits_algorithm(seed: int = 0, **options):
    data = Digits().load(DataContext(Path("."), Path("."), {}))
    opts = MetaGMVAE.resolve_options({"train_steps": 3, "images_per_task": 40, "tasks_per_step": 2,
                                      "mc_samples": 2, "hidden": 16, "latent": 8, "em_iters": 3,
                                      "test_em_iters": 3, "cluster_restarts": 3, **options})
    ctx = RunContext(torch.device("cpu"), seed, 5, 1, 5, data.image_shape, opts,
                     unlabeled=data.split("train").unlabeled(), dataset="digits")
    alg = MetaGMVAE()
    alg.setup(ctx)
    return alg, data


def test_cluster_recovers_a_well_separated_mixture():
    alg, _ = _digits_algorithm(train_steps=0)
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(3, 5, 8, generator=g) * 20                  # 3 tasks, 5 clusters, 8-d latents
    labels = torch.randint(0, 5, (3, 40), generator=g)
    z = centres.gather(1, labels.unsqueeze(-1).expand(-1, -1, 8)) + torch.randn(3, 40, 8, generator=g) * 0.3
    alg.net.posterior = lambda x: (x.flatten(2), torch.full_like(x.flatten(2), -4.0))  # latents = the inputs
    for covariance in ("diag", "tied", "identity"):
        alg.o = {**alg.o, "cluster_covariance": covariance}
        ids = alg.cluster(z.view(3, 40, 1, 1, 8), 5)
        assert ids.dtype == torch.int64 and ids.shape == (3, 40) and int(ids.min()) >= 0 and int(ids.max()) < 5
        for t in range(3):
            assert normalized_mutual_info_score(labels[t].numpy(), ids[t].numpy()) == 1.0


def test_cluster_ignores_dimensions_that_repeat_the_prior():
    """Latents whose posterior variance is the prior's (a collapsed VAE unit) carry no cluster structure, only
    noise: with their noise wider than the clusters' spread, k-means on every dimension fails, while
    ``cluster`` keeps the informative dimensions and recovers the partition."""
    alg, _ = _digits_algorithm(train_steps=0)
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(4, 5, 6, generator=g) * 3                    # 4 tasks, 5 clusters, 6 informative dims
    labels = torch.randint(0, 5, (4, 60), generator=g)
    informative = centres.gather(1, labels.unsqueeze(-1).expand(-1, -1, 6)) + torch.randn(4, 60, 6, generator=g) * 0.2
    noise = torch.randn(4, 60, 26, generator=g) * 6                     # 26 collapsed dims, wide noise
    z = torch.cat([informative, noise], -1)
    logvar = torch.cat([torch.full((4, 60, 6), -3.0), torch.zeros(4, 60, 26)], -1)
    alg.net.posterior = lambda x: (x.flatten(2), logvar)
    ids = alg.cluster(z.view(4, 60, 1, 1, 32), 5)
    plain = kmeans(z, 5, make_generator(0), n_init=10).labels
    for t in range(4):
        assert normalized_mutual_info_score(labels[t].numpy(), ids[t].numpy()) == 1.0
        assert normalized_mutual_info_score(labels[t].numpy(), plain[t].numpy()) < 0.6


def test_short_training_on_digits_is_finite_and_reproducible():
    def run():
        alg, data = _digits_algorithm()
        losses = alg.meta_train(iter(()), Budget(0, 1))
        test = data.split("test")
        ep = EpisodeSampler(test.images, test.labels, 5, 1, 5).sample(2, make_generator(3))
        logits = alg.predict(ep.support_x, ep.support_y, ep.query_x, 5)
        ids = alg.cluster(torch.cat([ep.support_x, ep.query_x], 1), 5)
        return losses, logits, ids, alg.embed(ep.query_x[0])

    losses, logits, ids, feats = run()
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert logits.shape == (2, 25, 5) and bool(torch.isfinite(logits).all())
    assert ids.shape == (2, 30) and ids.dtype == torch.int64
    assert feats.shape == (25, 8)
    again = run()
    assert again[0] == losses and torch.equal(again[1], logits) and torch.equal(again[2], ids)
    assert torch.equal(again[3], feats)


def test_the_sealed_check_dataset_holds_a_default_meta_gmvae_set():
    """check-plugin's secret dataset must be large enough for Meta-GMVAE's default unlabeled sets, or the
    sealed isolation check of an honest plugin fails for want of images."""
    from metabench.checks.sealed_check import secret_dataset

    data = secret_dataset("digits", (1, 8, 8))
    assert data.splits["train"].numel() >= MetaGMVAE.defaults["images_per_task"]
