"""CACTUs: Clustering to Automatically Construct Tasks for Unsupervised meta-learning.

Hsu, Levine & Finn, "Unsupervised Learning via Meta-Learning", ICLR 2019 (arXiv:1810.02334). The unlabeled
images are embedded; ``P`` partitions of them are made by k-means with ``k`` clusters, each on the
embedding with every dimension multiplied by a random factor from U(0, 1) (the first partition unscaled,
as in the authors' code), to diversify the partitions; clusters with fewer than K+Q members are dropped.
A task picks a partition, N of its clusters, and K+Q members of each.

Embeddings (option ``embedding``): ``pixels``; ``pca`` (top ``dims`` principal components); ``autoencoder``
(a small conv autoencoder, :mod:`metabench.toolkit.autoencoder`). The paper used BiGAN, ACAI and DeepCluster.
The paper's settings are k=500 (Omniglot, miniImageNet) or 10 (MNIST) and P=100 (Omniglot, MNIST) or 50
(miniImageNet). Defaults here: ``partitions=50`` (CPU-friendly; set 100 for the paper's Omniglot/MNIST
runs) and ``clusters="auto"``: 500, reduced to ``M // (4 (K+Q))`` on small sets so that clusters can hold
K+Q images; set ``clusters=10`` for the paper's MNIST protocol. k-means (k-means++ start, one run per
partition as in the paper) stops after ``kmeans_iters=30`` Lloyd steps: on Omniglot's PCA-64 embedding that
is within 0.2% of the converged inertia, at about 6 s per partition on one CPU core (5 min for 50; seconds
on a GPU). Partitions are cached per (seed, data fingerprint, options) in the run's cache folder.
"""
from __future__ import annotations

import warnings

import torch

from metabench import Claim, EpisodeBatch, PluginError, RunContext, TaskGenerator, UnlabeledSplit, hookimpl
from metabench.toolkit.augment import sample_distinct
from metabench.toolkit.autoencoder import fingerprint
from metabench.toolkit.datacache import cache_key, cached_tensors
from metabench.toolkit.episodes import batch_from_indices, to_float
from metabench.toolkit.embeddings import EMBEDDINGS, fit_embedder
from metabench.toolkit.kmeans import kmeans
from metabench.seeding import derive_seed

VERSION = 1


class Cactus(TaskGenerator):
    """N-way tasks from k-means clusters of an embedding, over many randomly rescaled partitions."""

    name = "cactus"
    description = "CACTUs: tasks from k-means clusters of an embedding over randomly rescaled partitions"
    paper = "Hsu, Levine & Finn 2019, Unsupervised Learning via Meta-Learning, ICLR (arXiv:1810.02334)"
    defaults = {
        "embedding": "pca",     # pixels | pca | autoencoder
        "dims": 64,             # embedding dimension for pca / autoencoder
        "partitions": 50,       # P (paper: 100 for Omniglot and MNIST)
        "clusters": "auto",     # k (paper: 500 Omniglot, 10 MNIST); auto = min(500, M // (4 (K+Q)))
        "rescale": True,        # multiply embedding dimensions by U(0, 1) factors per partition
        "kmeans_iters": 30,     # Lloyd iterations (Omniglot PCA-64: within 0.2% of the converged inertia)
        "kmeans_n_init": 1,
        "autoencoder_steps": 1500,
    }
    claims = (*Claim.grid("Hsu et al. 2019 (CACTUs-ProtoNets, ACAI)", "Omniglot table", "omniglot",
                          {(5, 1): 68.12, (5, 5): 83.58, (20, 1): 47.75, (20, 5): 66.27}, algorithm="protonet",
                          note="row 'CACTUs-ProtoNets', ACAI (ours: `embedding`); paper not readable here: values "
                               "match later papers' copies, ACAI recalled; MNIST 10-way values not found"),
              *Claim.grid("Hsu et al. 2019 (CACTUs-MAML, ACAI)", "Omniglot table", "omniglot",
                          {(5, 1): 68.84, (5, 5): 87.78, (20, 1): 48.09, (20, 5): 73.36}, algorithm="maml",
                          note="row 'CACTUs-MAML', ACAI (ours: `embedding`); paper not readable here: values "
                               "match later papers' copies, ACAI recalled; MNIST 10-way values not found"))

    def setup(self, data: UnlabeledSplit, ctx: RunContext) -> None:
        """Embed the images, build (or load) the partitions, and index their usable clusters."""
        opts = ctx.options
        if opts["embedding"] not in EMBEDDINGS:
            raise PluginError(f"cactus: embedding must be one of {EMBEDDINGS}, got {opts['embedding']!r}")
        self.images = data.images
        self.ways, self.shots, self.queries = ctx.ways, ctx.shots, ctx.queries
        need = ctx.shots + ctx.queries
        m = self.images.shape[0]
        k = opts["clusters"]
        if k == "auto":
            k = max(ctx.ways, min(500, m // (4 * need)))
        if not isinstance(k, int) or not 1 <= k <= m:
            raise PluginError(f"cactus: clusters must be 'auto' or an int in 1..{m}, "
                              f"got {opts['clusters']!r}")
        self.clusters = k
        params = dict(opts, clusters=k, seed=ctx.seed, data=fingerprint(self.images))
        build = lambda: {"labels": self._partition(ctx, k)}  # noqa: E731
        if ctx.cache_dir is not None:
            labels = cached_tensors(ctx.cache_dir, cache_key("cactus", VERSION, **params), build)["labels"]
        else:
            labels = build()["labels"]
        self.partition_labels = labels.to(self.images.device, torch.int64)
        self._index(need)

    def _embed(self, ctx: RunContext) -> torch.Tensor:
        """The embedding ``[M, D]`` chosen by the ``embedding`` option."""
        opts = ctx.options
        embed = fit_embedder(opts["embedding"], self.images, derive_seed(ctx.seed, "cactus-embedding"),
                             opts["dims"], ctx.cache_dir, opts["autoencoder_steps"])
        return torch.cat([embed(to_float(self.images[s:s + 4096])) for s in range(0, self.images.shape[0], 4096)])

    def _partition(self, ctx: RunContext, k: int) -> torch.Tensor:
        """Cluster labels ``[P, M]`` (int32) of the ``P`` (rescaled) partitions."""
        z = self._embed(ctx).float()
        p = ctx.options["partitions"]
        g = ctx.generator("cactus-partitions")
        scales = torch.rand(p, z.shape[1], generator=g, device=z.device)
        if ctx.options["rescale"]:
            scales[0] = 1.0
        else:
            scales.fill_(1.0)
        group = max(1, 2**28 // max(1, z.numel() * z.element_size()))  # partitions clustered together
        labels = []
        for s in range(0, p, group):
            zs = z.unsqueeze(0) * scales[s:s + group].unsqueeze(1)   # [G, M, D]
            res = kmeans(zs, k, g, iters=ctx.options["kmeans_iters"], n_init=ctx.options["kmeans_n_init"])
            labels.append(res.labels.to(torch.int32))
        return torch.cat(labels)

    def _index(self, need: int) -> None:
        """Per partition: members sorted by cluster (``order``), each cluster's ``start`` and ``count``
        (0 for clusters under K+Q members), and the usable cluster ids packed first (``usable``)."""
        labels, dev = self.partition_labels, self.images.device
        p, m = labels.shape
        k = self.clusters
        counts = torch.zeros(p, k, dtype=torch.int64, device=dev).scatter_add_(
            1, labels, torch.ones_like(labels))
        counts = torch.where(counts >= need, counts, 0)
        usable = (counts > 0).sum(1)
        keep = usable >= self.ways
        if not bool(keep.any()):
            raise PluginError(f"cactus: no partition has {self.ways} clusters of >= {need} images "
                              f"(k={k}, {m} images); lower 'clusters' or the task size")
        if not bool(keep.all()):
            warnings.warn(f"cactus: dropped {int((~keep).sum())} of {p} partitions with fewer than "
                          f"{self.ways} clusters of >= {need} images", RuntimeWarning, stacklevel=3)
        labels, counts, usable = labels[keep], counts[keep], usable[keep]
        self.partition_labels = labels
        self.order = torch.argsort(labels, dim=1, stable=True)                     # [P, M]
        full = torch.zeros(labels.shape[0], k, dtype=torch.int64, device=dev).scatter_add_(
            1, labels, torch.ones_like(labels))
        self.starts = full.cumsum(1) - full                                          # [P, k]
        self.counts = counts
        self.usable = torch.argsort((counts == 0).to(torch.int8), dim=1, stable=True)  # usable ids first
        self.num_usable = usable

    @property
    def num_partitions(self) -> int:
        """Partitions kept (those with at least N usable clusters)."""
        return self.order.shape[0]

    def sample_indices(self, tasks: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Image indices ``[T, N, K+Q]`` and the partition ``[T]`` each task was drawn from."""
        dev = self.order.device
        part = torch.randint(0, self.num_partitions, (tasks,), generator=generator, device=dev)
        pos = sample_distinct(self.num_usable[part], self.ways, generator)          # [T, N]
        cl = torch.gather(self.usable[part], 1, pos)                                 # cluster ids
        pt = part.unsqueeze(1)
        members = sample_distinct(self.counts[pt, cl], self.shots + self.queries, generator)  # [T, N, m]
        idx = self.order[pt.unsqueeze(2), self.starts[pt, cl].unsqueeze(2) + members]
        return idx, part

    def sample(self, tasks: int, generator: torch.Generator) -> EpisodeBatch:
        """A meta-batch of ``tasks`` CACTUs tasks."""
        return batch_from_indices(self.images, self.sample_indices(tasks, generator)[0], self.shots)


@hookimpl
def metabench_task_generators():
    return [Cactus]
