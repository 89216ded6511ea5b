"""Jigsaw pretext tasks: class c = "the image's tiles rearranged by permutation c".

After Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles", ECCV
2016 (arXiv:1603.09246), cast as N-way few-shot tasks, beside ``rotation``. The image is cut into a
``grid`` x ``grid`` array of cells; a permutation says which source cell each cell shows. The classes come
from a fixed set of ``permutations`` permutations chosen to be maximally distinct (the paper's greedy
selection: each next permutation maximises the Hamming distance to the ones already chosen; here the
minimum distance, ties broken by the total, then by lexicographic order, starting from the identity), so
the set is the same in every run. As in the paper, each tile is a random crop of its cell, ``jitter``
pixels smaller, placed at a random offset in its new cell, so that edge continuity between tiles does not
give the arrangement away. ``grid = "auto"`` takes 2x2 cells of 14 px on 28x28 images (a 3x3 grid would cut
Omniglot's strokes into 9-px tiles), 3x3 from 42 px on. Each task draws N permutations of the set at
random (labels 0..N-1 in random order) and, by default, the same K+Q unlabeled images for every class, so
that only the arrangement tells the classes apart. Never reads labels.
"""
from __future__ import annotations

import itertools
import math

import torch

from metabench import EpisodeBatch, PluginError, RunContext, TaskGenerator, UnlabeledSplit, hookimpl
from metabench.toolkit.augment import sample_distinct
from metabench.toolkit.episodes import batch_from_indices


def maximal_permutations(cells: int, count: int) -> torch.Tensor:
    """``count`` permutations of ``range(cells)`` (int64 ``[count, cells]``), chosen greedily to be far apart
    in Hamming distance: the identity first, then each time the permutation whose minimum distance to those
    chosen is largest (ties: largest total distance, then the first in lexicographic order)."""
    if not 2 <= count <= math.factorial(cells):
        raise ValueError(f"{count} permutations of {cells} cells: want 2..{math.factorial(cells)}")
    every = torch.tensor(list(itertools.permutations(range(cells))), dtype=torch.int64)  # lexicographic
    chosen = [0]
    min_d = (every != every[0]).sum(1)
    total = min_d.clone()
    for _ in range(count - 1):
        score = min_d * (cells * count + 1) + total  # lexicographic (min, total) in one integer
        score[chosen] = -1
        best = int(torch.argmax(score))  # the first maximum: the lexicographically smallest permutation
        chosen.append(best)
        d = (every != every[best]).sum(1)
        min_d, total = torch.minimum(min_d, d), total + d
    return every[chosen]


def jigsaw_sources(perm: torch.Tensor, offsets: torch.Tensor, side: int, grid: int, jitter: int) -> torch.Tensor:
    """Source pixel index (``-1``: blank) of every output pixel, int64 ``[B, side*side]``.

    ``perm`` ``[B, grid*grid]``: output cell j shows source cell ``perm[:, j]``; ``offsets`` ``[B, grid*grid,
    4]`` in ``0..jitter``: per output cell, the crop's row/column offset inside the source cell and the tile's
    row/column offset inside the output cell. Cells are ``side // grid`` pixels; pixels past ``grid`` cells
    (when ``grid`` does not divide ``side``) stay blank."""
    dev = perm.device
    cell = side // grid
    tile = cell - jitter
    y, x = torch.meshgrid(torch.arange(side, device=dev), torch.arange(side, device=dev), indexing="ij")
    y, x = y.reshape(-1), x.reshape(-1)
    inside = (y < cell * grid) & (x < cell * grid)
    out_cell = (y // cell).clamp(max=grid - 1) * grid + (x // cell).clamp(max=grid - 1)     # [P]
    u, v = y % cell, x % cell                                                               # in-cell position
    off = offsets[:, out_cell]                                                              # [B, P, 4]
    tu, tv = u - off[..., 2], v - off[..., 3]                                               # in-tile position
    on_tile = inside & (tu >= 0) & (tu < tile) & (tv >= 0) & (tv < tile)
    src = perm[:, out_cell]                                                                 # [B, P]
    sy = (src // grid) * cell + off[..., 0] + tu
    sx = (src % grid) * cell + off[..., 1] + tv
    return torch.where(on_tile, sy * side + sx, torch.full_like(sy, -1))


class Jigsaw(TaskGenerator):
    """N-way tasks whose classes are tile permutations of unlabeled images."""

    name = "jigsaw"
    description = "Pretext tasks: class c = the image's tiles rearranged by permutation c (maximally distinct set)"
    paper = ("Noroozi & Favaro 2016, Unsupervised Learning of Visual Representations by Solving Jigsaw "
             "Puzzles, ECCV (arXiv:1603.09246)")
    defaults = {"grid": "auto", "permutations": 24, "jitter": 2, "shared_images": True}

    def setup(self, data: UnlabeledSplit, ctx: RunContext) -> None:
        """Fix the grid and the permutation set; check that tasks of the context's shape can be made."""
        c, h, w = ctx.image_shape
        if h != w:
            raise PluginError(f"jigsaw: needs square images, got {h}x{w}")
        grid = ctx.options["grid"]
        grid = (2 if h < 42 else 3) if grid == "auto" else grid
        if not isinstance(grid, int) or grid < 2 or h // grid < 2:
            raise PluginError(f"jigsaw: grid must be 'auto' or an integer >= 2 with cells of >= 2 px, got {grid!r}")
        count = int(ctx.options["permutations"])
        count = min(count, math.factorial(grid * grid))
        jitter = int(ctx.options["jitter"])
        if not 0 <= jitter < h // grid:
            raise PluginError(f"jigsaw: jitter must be in 0..{h // grid - 1} for {grid}x{grid} cells of {h} px")
        if ctx.ways > count:
            raise PluginError(f"jigsaw: {ctx.ways}-way tasks need {ctx.ways} permutations; the set has {count} "
                              f"(option permutations, at most {math.factorial(grid * grid)} for a {grid}x{grid} grid)")
        self.shared = bool(ctx.options["shared_images"])
        self.ways, self.shots, self.queries = ctx.ways, ctx.shots, ctx.queries
        per_task = (ctx.shots + ctx.queries) * (1 if self.shared else ctx.ways)
        if len(data) < per_task:
            raise PluginError(f"jigsaw: a task needs {per_task} distinct images, the split has {len(data)}")
        self.images, self.side, self.grid, self.jitter = data.images, h, grid, jitter
        self.perms = maximal_permutations(grid * grid, count).to(data.images.device)

    def sample(self, tasks: int, generator: torch.Generator) -> EpisodeBatch:
        """A meta-batch of ``tasks`` permutation-recognition tasks."""
        t, n, m = tasks, self.ways, self.shots + self.queries
        dev = self.images.device
        which = sample_distinct(torch.full((t,), self.perms.shape[0], device=dev), n, generator)   # [T, N]
        total = torch.full((t,), self.images.shape[0], device=dev)
        if self.shared:
            idx = sample_distinct(total, m, generator).unsqueeze(1).expand(t, n, m)
        else:
            idx = sample_distinct(total, n * m, generator).view(t, n, m)
        cells = self.grid * self.grid
        offsets = torch.randint(0, self.jitter + 1, (t, n, m, cells, 4), generator=generator, device=dev)
        perm = self.perms[which].unsqueeze(2).expand(t, n, m, cells)
        src = jigsaw_sources(perm.reshape(-1, cells), offsets.view(-1, cells, 4), self.side, self.grid,
                             self.jitter).view(t, n, m, -1)
        batch = batch_from_indices(self.images, idx, self.shots)
        c, side = self.images.shape[1], self.side
        for key, lo, hi in (("support_x", 0, self.shots), ("query_x", self.shots, m)):
            x = getattr(batch, key).view(t, n, hi - lo, c, side * side)
            s = src[:, :, lo:hi].unsqueeze(3).expand(-1, -1, -1, c, -1)
            tiled = torch.gather(x, -1, s.clamp(min=0)) * (s >= 0)
            setattr(batch, key, tiled.view(t, n * (hi - lo), c, side, side))
        return batch


@hookimpl
def metabench_task_generators():
    return [Jigsaw]
