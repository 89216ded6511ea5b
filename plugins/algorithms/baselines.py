"""No-meta baselines: an embedding fitted on the unlabeled meta-training images, then a plain classifier
per task. Hsu, Levine & Finn ("Unsupervised Learning via Meta-Learning", ICLR 2019, Table 1) report them to
show what meta-learning adds on top of the embedding alone.

``embed_knn`` classifies queries by their k nearest support images; ``embed_linear`` fits a multinomial
logistic regression on each task's support set (all tasks of a batch at once). The embedding (option
``embedding``) is ``pixels``, ``pca`` or ``autoencoder`` (see :mod:`metabench.toolkit.embeddings`); features are
L2-normalised unless ``normalize = false`` (raw pixels: the classic k-means-on-pixels clustering baseline). Neither uses any task: pair them with the ``unlabeled`` generator.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from metabench import Algorithm, Budget, EpisodeBatch, PluginError, RunContext, hookimpl
from metabench.toolkit.embeddings import EMBEDDINGS, fit_embedder
from metabench.seeding import derive_seed


class _EmbeddingBaseline(Algorithm):
    needs_tasks = False  # learns from ctx.unlabeled alone
    defaults = {"embedding": "pca", "dims": 64, "autoencoder_steps": 1500, "normalize": True}

    def setup(self, ctx: RunContext) -> None:
        """Fit the embedding on ``ctx.unlabeled`` (never on labels)."""
        o = ctx.options
        if o["embedding"] not in EMBEDDINGS:
            raise PluginError(f"{self.name}: embedding must be one of {EMBEDDINGS}, got {o['embedding']!r}")
        if ctx.unlabeled is None:
            raise PluginError(f"{self.name}: needs the unlabeled meta-training split")
        self.options = o
        self.embedder = fit_embedder(o["embedding"], ctx.unlabeled.images, derive_seed(ctx.seed, "embedding"),
                                     int(o["dims"]), ctx.cache_dir, int(o["autoencoder_steps"]))

    def meta_train(self, stream: Iterator[EpisodeBatch], budget: Budget, on_step=None) -> list[float]:
        """No meta-training: the embedding was fitted in :meth:`setup`."""
        return []

    def train_step(self, batch: EpisodeBatch, step: int) -> float:
        """Never called (no meta-training)."""
        raise PluginError(f"{self.name} does not meta-train")

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding ``[M, D]``, L2-normalised unless ``normalize = false``."""
        z = self.embedder(x).float()
        return F.normalize(z, dim=1) if self.options["normalize"] else z

    def _features(self, support_x: torch.Tensor, query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, s, q = support_x.shape[0], support_x.shape[1], query_x.shape[1]
        z = self.embed(torch.cat([support_x.flatten(0, 1), query_x.flatten(0, 1)]))
        return z[: t * s].view(t, s, -1), z[t * s:].view(t, q, -1)


class EmbedKNN(_EmbeddingBaseline):
    """k nearest support neighbours in an unsupervised embedding."""

    name = "embed_knn"
    description = "No-meta baseline: k-nearest-neighbour on an unsupervised embedding (pixels/PCA/autoencoder)"
    paper = "Hsu, Levine & Finn 2019, Unsupervised Learning via Meta-Learning (ICLR), Table 1 baselines"
    defaults = {**_EmbeddingBaseline.defaults, "k": 1}
    smoke_partner = {"embedding": "pixels"}  # checks task generators that give no tasks

    @torch.no_grad()
    def predict(self, support_x, support_y, query_x, ways):
        """Logits ``[T, Q, ways]``: votes of the k nearest supports, ties broken by the nearest distance."""
        zs, zq = self._features(support_x, query_x)
        d = torch.cdist(zq, zs)                                             # [T, Q, S]
        k = min(int(self.options["k"]), zs.shape[1])
        near_d, near_i = d.topk(k, dim=2, largest=False)
        votes = F.one_hot(support_y.gather(1, near_i.flatten(1)).view_as(near_i), ways).sum(2).float()
        nearest = torch.full_like(votes, float("inf")).scatter_reduce(
            2, support_y.unsqueeze(1).expand_as(d), d, "amin")
        return votes - 1e-3 * nearest.clamp(max=1e3)


class EmbedLinear(_EmbeddingBaseline):
    """A logistic-regression classifier per task on an unsupervised embedding."""

    name = "embed_linear"
    description = "No-meta baseline: logistic regression per task on an unsupervised embedding"
    paper = "Hsu, Levine & Finn 2019, Unsupervised Learning via Meta-Learning (ICLR), Table 1 baselines"
    defaults = {**_EmbeddingBaseline.defaults, "steps": 100, "lr": 0.5, "weight_decay": 1e-3}

    @torch.no_grad()
    def predict(self, support_x, support_y, query_x, ways):
        """Logits ``[T, Q, ways]`` of a linear classifier fitted by full-batch gradient descent per task."""
        zs, zq = self._features(support_x, query_x)
        t, _, d = zs.shape
        w = torch.zeros(t, d, ways, device=zs.device, requires_grad=True)
        b = torch.zeros(t, 1, ways, device=zs.device, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=float(self.options["lr"]))
        target = support_y.flatten()
        with torch.enable_grad():
            for _ in range(int(self.options["steps"])):
                logits = torch.baddbmm(b, zs, w)
                loss = F.cross_entropy(logits.flatten(0, 1), target, reduction="sum") / t \
                    + float(self.options["weight_decay"]) * w.square().sum() / t
                opt.zero_grad()
                loss.backward()
                opt.step()
        return torch.baddbmm(b, zq, w).detach()


@hookimpl
def metabench_algorithms():
    return [EmbedKNN, EmbedLinear]
