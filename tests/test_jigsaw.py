"""Jigsaw pretext tasks: the permutation set is the paper's greedy maximal-Hamming selection, tiles land
where the permutation says, and tasks are seeded, shaped and told apart only by the arrangement."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from metabench import PluginError, RunContext, UnlabeledSplit
from metabench_plugins.generators.jigsaw import Jigsaw, jigsaw_sources, maximal_permutations


def naive_greedy(cells: int, count: int) -> list[tuple[int, ...]]:
    """Noroozi & Favaro's selection written out: identity first, then the permutation farthest (min
    Hamming distance, then total distance, then lexicographic order) from those chosen."""
    every = list(itertools.permutations(range(cells)))
    chosen = [every[0]]
    while len(chosen) < count:
        best, best_key = None, None
        for p in every:
            if p in chosen:
                continue
            d = [sum(a != b for a, b in zip(p, q)) for q in chosen]
            key = (min(d), sum(d))
            if best_key is None or key > best_key:
                best, best_key = p, key
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("cells,count", [(4, 24), (4, 10), (5, 20)])
def test_permutation_set_matches_the_greedy_selection(cells, count):
    got = maximal_permutations(cells, count)
    assert [tuple(r) for r in got.tolist()] == naive_greedy(cells, count)
    assert len({tuple(r) for r in got.tolist()}) == count


def test_the_first_permutations_of_a_2x2_grid_differ_in_every_cell():
    p = maximal_permutations(4, 4)
    d = (p.unsqueeze(0) != p.unsqueeze(1)).sum(-1)
    assert int(d[~torch.eye(4, dtype=torch.bool)].min()) == 4  # four derangements of each other


def test_tiles_without_jitter_are_the_cells_rearranged():
    side, grid = 6, 3
    img = torch.arange(side * side).view(side, side)
    perm = torch.tensor([[8, 7, 6, 5, 4, 3, 2, 1, 0]])
    src = jigsaw_sources(perm, torch.zeros(1, 9, 4, dtype=torch.int64), side, grid, 0)
    out = img.reshape(-1)[src[0]].view(side, side).numpy()
    cells = img.numpy().reshape(grid, 2, grid, 2).transpose(0, 2, 1, 3).reshape(9, 2, 2)
    want = np.block([[cells[perm[0, r * grid + c]] for c in range(grid)] for r in range(grid)])
    assert np.array_equal(out, want)


def test_jitter_crops_within_the_source_cell_and_blanks_the_rest():
    side, grid, jitter = 28, 2, 2
    perm = torch.tensor([[1, 0, 3, 2]])
    offsets = torch.tensor([[[2, 0, 1, 1], [0, 0, 0, 0], [1, 2, 2, 0], [0, 1, 0, 2]]])
    src = jigsaw_sources(perm, offsets, side, grid, jitter)[0].view(side, side)
    cell, tile = side // grid, side // grid - jitter
    for j in range(4):
        r, c = divmod(j, grid)
        block = src[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
        shown = block[block >= 0]
        assert shown.numel() == tile * tile  # one tile, the rest of the cell blank
        sr, sc = divmod(int(perm[0, j]), grid)
        ys, xs = shown // side, shown % side
        assert int(ys.min()) == sr * cell + int(offsets[0, j, 0]) and int(xs.min()) == sc * cell + int(offsets[0, j, 1])
        assert int(ys.max()) < (sr + 1) * cell and int(xs.max()) < (sc + 1) * cell


def make(images, ways=5, shots=1, queries=3, **options):
    ctx = RunContext(torch.device("cpu"), 0, ways, shots, queries, tuple(images.shape[1:]),
                     Jigsaw.resolve_options(options))
    g = Jigsaw()
    g.setup(UnlabeledSplit(images), ctx)
    return g


def test_tasks_are_seeded_shaped_and_differ_only_by_arrangement():
    images = torch.randint(1, 256, (50, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    g = make(images, ways=5, shots=2, queries=3, jitter=0)
    b = g.sample(4, torch.Generator().manual_seed(1)).check("jigsaw", 4, 5, 2, 3, (1, 28, 28))
    again = g.sample(4, torch.Generator().manual_seed(1))
    assert torch.equal(b.query_x, again.query_x) and torch.equal(b.support_y, again.support_y)
    assert not torch.equal(b.query_x, g.sample(4, torch.Generator().manual_seed(2)).query_x)
    x = b.support_x.view(4, 5, 2, 784)
    # the same images under every class (shared): sorted pixel values agree, arrangements differ
    assert torch.equal(x.sort(-1).values[:, :1].expand_as(x), x.sort(-1).values)
    assert not torch.equal(x[:, 0], x[:, 1])


def test_refuses_tasks_it_cannot_make():
    images = torch.zeros(50, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(PluginError, match="permutations"):
        make(images, ways=30)  # a 2x2 grid has 24 permutations
    with pytest.raises(PluginError, match="square"):
        make(torch.zeros(50, 1, 28, 20, dtype=torch.uint8))
    assert make(torch.zeros(50, 1, 84, 84, dtype=torch.uint8), ways=20, permutations=100).perms.shape == (100, 9)
    assert math.factorial(4) == make(images, ways=20, permutations=100).perms.shape[0]
