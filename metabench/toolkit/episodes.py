"""N-way K-shot Q-query episodes built as whole meta-batches by tensor indexing on the target device."""
from __future__ import annotations

import torch

from metabench.contracts import EpisodeBatch, PluginError


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1] (on the images' device)."""
    return images.to(torch.float32).div_(255.0)


class EpisodeSampler:
    """Samples meta-batches of tasks from images grouped by a label (a class or a pseudo-class).

    The per-class member lists are packed once into a padded index table ``[classes, max_members]``;
    a meta-batch is then a few ``rand``/``argsort``/gather calls, whatever the number of tasks.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ways: int, shots: int, queries: int,
                 min_members: int | None = None) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError("images and labels differ in length")
        self.images, self.ways, self.shots, self.queries = images, ways, shots, queries
        device = images.device
        need = shots + queries if min_members is None else min_members
        labels = labels.to(device)
        classes, counts = torch.unique(labels, return_counts=True)
        keep = counts >= need
        classes, counts = classes[keep], counts[keep]
        if classes.numel() < ways:
            raise PluginError(f"only {classes.numel()} classes have >= {need} images; "
                              f"a {ways}-way {shots}-shot {queries}-query task needs {ways}")
        order = torch.argsort(labels, stable=True)
        sorted_labels = labels[order]
        starts = torch.searchsorted(sorted_labels, classes)
        width = int(counts.max())
        offs = torch.arange(width, device=device)
        pos = (starts[:, None] + offs[None, :]).clamp(max=order.numel() - 1)
        self.table = order[pos]                       # [C, width] image indices (padded)
        self.valid = offs[None, :] < counts[:, None]  # [C, width]
        self.counts = counts
        self.uniform = bool((counts == width).all())

    @property
    def num_classes(self) -> int:
        """Classes with enough members to be sampled."""
        return self.table.shape[0]

    def sample_indices(self, tasks: int, generator: torch.Generator) -> torch.Tensor:
        """Image indices ``[T, N, K+Q]``: N distinct classes per task, K+Q distinct members per class."""
        dev, n, m = self.table.device, self.ways, self.shots + self.queries
        cls = torch.rand(tasks, self.num_classes, generator=generator, device=dev).argsort(dim=1)[:, :n]
        width = self.table.shape[1]
        scores = torch.rand(tasks, n, width, generator=generator, device=dev)
        if not self.uniform:
            scores = scores.masked_fill(~self.valid[cls], 2.0)
        members = scores.argsort(dim=2)[:, :, :m]                      # [T, N, K+Q] positions
        return torch.gather(self.table[cls], 2, members)

    def sample(self, tasks: int, generator: torch.Generator) -> EpisodeBatch:
        """A meta-batch of ``tasks`` episodes with class-major support and query sets."""
        idx = self.sample_indices(tasks, generator)
        return batch_from_indices(self.images, idx, self.shots)


def batch_from_indices(images: torch.Tensor, idx: torch.Tensor, shots: int) -> EpisodeBatch:
    """Gather ``images`` at ``idx`` ``[T, N, K+Q]`` into an :class:`EpisodeBatch` (first K are support)."""
    t, n, m = idx.shape
    dev = images.device
    y = torch.arange(n, device=dev).view(1, n, 1)
    sup, qry = idx[:, :, :shots].reshape(t, -1), idx[:, :, shots:].reshape(t, -1)
    return EpisodeBatch(
        support_x=to_float(images[sup]),
        support_y=y.expand(t, n, shots).reshape(t, -1).clone(),
        query_x=to_float(images[qry]),
        query_y=y.expand(t, n, m - shots).reshape(t, -1).clone(),
        ways=n,
    )
