"""Pretext tasks from image transformations: class c = "transformed by transformation c".

After Gidaris, Singh & Komodakis, "Unsupervised Representation Learning by Predicting Image Rotations",
ICLR 2018 (arXiv:1803.07728), cast as N-way few-shot tasks. Transformations are the symmetries of the
square: the rotations by 0/90/180/270 degrees (counter-clockwise, ``torch.rot90``), then, for N up to 8,
the same four applied after a horizontal flip (so N > 8 is refused). Class c of a task holds K+Q unlabeled
images, each transformed by transformation c (by default the same K+Q images for every class, as Gidaris
et al. batch all rotations of each image; option ``shared_images=False`` draws distinct images per class).
With ``shuffle_labels`` each task assigns the transformations (N of the 4, or of the 8 when N > 4 or
``transforms="dihedral"``) to classes in a random order, so labels must be inferred from the support set.
Square images only.
"""
from __future__ import annotations

import torch

from metabench import EpisodeBatch, PluginError, RunContext, TaskGenerator, UnlabeledSplit, hookimpl
from metabench.toolkit.augment import sample_distinct
from metabench.toolkit.episodes import batch_from_indices

TRANSFORMS = ("rot0", "rot90", "rot180", "rot270", "flip+rot0", "flip+rot90", "flip+rot180", "flip+rot270")


def transform_maps(side: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Pixel index maps ``[8, side*side]``: ``flat[..., maps[c]]`` is the image under ``TRANSFORMS[c]``."""
    grid = torch.arange(side * side, device=device).view(side, side)
    out = [torch.rot90(grid, r, dims=(0, 1)) for r in range(4)]
    out += [torch.rot90(grid.flip(1), r, dims=(0, 1)) for r in range(4)]
    return torch.stack([o.reshape(-1) for o in out])


def apply_transforms(x: torch.Tensor, which: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Images ``x`` ``[..., C, S, S]``, each transformed by ``TRANSFORMS[which]`` (``which``: ``[...]``)."""
    *lead, c, h, w = x.shape
    idx = maps[which].view(*lead, 1, h * w).expand(*lead, c, h * w)
    return torch.gather(x.reshape(*lead, c, h * w), -1, idx).view(*lead, c, h, w)


class Rotation(TaskGenerator):
    """N-way tasks whose classes are rotations (and flips) of unlabeled images."""

    name = "rotation"
    description = "Pretext tasks: class c = images rotated by c*90 degrees (with flips for N > 4)"
    paper = ("Gidaris, Singh & Komodakis 2018, Unsupervised Representation Learning by Predicting Image "
             "Rotations, ICLR (arXiv:1803.07728)")
    defaults = {"shared_images": True, "shuffle_labels": False, "transforms": "auto"}

    def setup(self, data: UnlabeledSplit, ctx: RunContext) -> None:
        """Check the task shape against the transformation set and precompute the pixel maps."""
        c, h, w = ctx.image_shape
        if h != w:
            raise PluginError(f"rotation: needs square images, got {h}x{w}")
        kind = ctx.options["transforms"]
        if kind not in ("auto", "rotations", "dihedral"):
            raise PluginError(f"rotation: transforms must be auto, rotations or dihedral, got {kind!r}")
        pool = 8 if kind == "dihedral" or (kind == "auto" and ctx.ways > 4) else 4
        if ctx.ways > pool:
            raise PluginError(f"rotation: {ctx.ways}-way tasks need {ctx.ways} transformations; "
                              f"{'only 8 (rotations x flip) exist' if pool == 8 else 'rotations give 4'}")
        self.pool = pool
        self.shared = bool(ctx.options["shared_images"])
        self.shuffle = bool(ctx.options["shuffle_labels"])
        self.ways, self.shots, self.queries = ctx.ways, ctx.shots, ctx.queries
        per_task = (ctx.shots + ctx.queries) * (1 if self.shared else ctx.ways)
        if len(data) < per_task:
            raise PluginError(f"rotation: a task needs {per_task} distinct images, the split has {len(data)}")
        self.images = data.images
        self.maps = transform_maps(h, data.images.device)

    def sample_transforms(self, tasks: int, generator: torch.Generator) -> torch.Tensor:
        """Index into :data:`TRANSFORMS` ``[T, N]`` of each class (``0..N-1`` unless ``shuffle_labels``)."""
        dev = self.images.device
        if not self.shuffle:
            return torch.arange(self.ways, device=dev).expand(tasks, -1)
        return sample_distinct(torch.full((tasks,), self.pool, device=dev), self.ways, generator)

    def sample(self, tasks: int, generator: torch.Generator) -> EpisodeBatch:
        """A meta-batch of ``tasks`` transformation-prediction tasks."""
        t, n, m = tasks, self.ways, self.shots + self.queries
        dev = self.images.device
        which = self.sample_transforms(tasks, generator)                       # [T, N]
        total = torch.full((t,), self.images.shape[0], device=dev)
        if self.shared:
            idx = sample_distinct(total, m, generator).unsqueeze(1).expand(t, n, m)
        else:
            idx = sample_distinct(total, n * m, generator).view(t, n, m)
        batch = batch_from_indices(self.images, idx, self.shots)
        c, h, w = self.images.shape[1:]
        for key, per in (("support_x", self.shots), ("query_x", self.queries)):
            x = getattr(batch, key).view(t, n, per, c, h, w)
            setattr(batch, key, apply_transforms(x, which.unsqueeze(2).expand(t, n, per), self.maps)
                    .view(t, n * per, c, h, w))
        return batch


@hookimpl
def metabench_task_generators():
    return [Rotation]
