"""UMTRA: Unsupervised Meta-learning with Tasks constructed by Random sampling and Augmentation.

Khodadadeh, Bölöni & Shah, "Unsupervised Meta-Learning for Few-Shot Image Classification", NeurIPS 2019
(arXiv:1811.11819). A task takes N random unlabeled images as its N classes (distinct images; with many
more classes than N in the data they are likely of distinct classes). The support set is the images
themselves (K=1 in the paper; for K>1, the image plus K-1 augmented copies) and every query is an
augmented copy made by :func:`metabench.toolkit.augment.augment`. Option ``augmentation``: a profile name of
:mod:`metabench.toolkit.augment` (``strokes`` is the paper's Omniglot shift + random pixel zeroing), or
``auto`` (the profile the dataset plugin declares, e.g. ``handwriting`` for MNIST; else ``natural`` for
colour images, ``small_handwriting`` up to 16 px, ``strokes`` otherwise).
"""
from __future__ import annotations

import torch

from metabench import Claim, EpisodeBatch, PluginError, RunContext, TaskGenerator, UnlabeledSplit, hookimpl
from metabench.toolkit.augment import PROFILES, augment, auto_profile, sample_distinct
from metabench.toolkit.episodes import to_float


class Umtra(TaskGenerator):
    """N random images as N classes; queries (and extra shots) are augmented copies of them."""

    name = "umtra"
    description = "UMTRA: N random unlabeled images as classes, queries made by augmentation"
    paper = ("Khodadadeh, Bölöni & Shah 2019, Unsupervised Meta-Learning for Few-Shot Image "
             "Classification, NeurIPS (arXiv:1811.11819)")
    defaults = {"augmentation": "auto"}
    claims = Claim.grid("Khodadadeh et al. 2019 (UMTRA + MAML)", "Omniglot table", "omniglot",
                        {(5, 1): 83.80, (5, 5): 95.43, (20, 1): 74.25, (20, 5): 92.12}, algorithm="maml",
                        note="row 'UMTRA' (NeurIPS version); paper not readable here: all four match a later "
                             "paper's copy of the table; table number not verified")

    def setup(self, data: UnlabeledSplit, ctx: RunContext) -> None:
        """Keep the images and resolve the augmentation profile."""
        profile = ctx.options["augmentation"]
        if profile == "auto":
            profile = auto_profile(ctx.image_shape, ctx.augmentation)
        if profile not in PROFILES:
            raise PluginError(f"umtra: augmentation must be 'auto' or one of {sorted(PROFILES)}, "
                              f"got {profile!r}")
        if len(data) < ctx.ways:
            raise PluginError(f"umtra: {len(data)} images cannot make a {ctx.ways}-way task")
        self.images, self.profile = data.images, profile
        self.ways, self.shots, self.queries = ctx.ways, ctx.shots, ctx.queries

    def sample_indices(self, tasks: int, generator: torch.Generator) -> torch.Tensor:
        """The N distinct source images ``[T, N]`` of each task."""
        m = torch.full((tasks,), self.images.shape[0], dtype=torch.int64, device=self.images.device)
        return sample_distinct(m, self.ways, generator)

    def sample(self, tasks: int, generator: torch.Generator) -> EpisodeBatch:
        """A meta-batch: support ``[T, N*K]`` (originals first per class), queries ``[T, N*Q]`` augmented."""
        t, n, k, q = tasks, self.ways, self.shots, self.queries
        src = to_float(self.images[self.sample_indices(tasks, generator)])           # [T, N, C, H, W]
        shape = src.shape[2:]
        copies = k - 1 + q
        aug = augment(src.unsqueeze(2).expand(t, n, copies, *shape).reshape(-1, *shape), generator,
                      self.profile).view(t, n, copies, *shape)
        support = torch.cat([src.unsqueeze(2), aug[:, :, :k - 1]], 2)                # [T, N, K, ...]
        y = torch.arange(n, device=src.device).view(1, n, 1)
        return EpisodeBatch(
            support_x=support.reshape(t, n * k, *shape),
            support_y=y.expand(t, n, k).reshape(t, -1).clone(),
            query_x=aug[:, :, k - 1:].reshape(t, n * q, *shape),
            query_y=y.expand(t, n, q).reshape(t, -1).clone(),
            ways=n,
        )


@hookimpl
def metabench_task_generators():
    return [Umtra]
