"""Backbones shared by the built-in algorithms."""
from __future__ import annotations

import torch
from torch import nn


def conv_block(cin: int, cout: int, pool: bool, track_running_stats: bool = True) -> nn.Sequential:
    """3x3 conv (padding 1), batch norm, ReLU, and a 2x2 max-pool when ``pool``.

    ``track_running_stats=False`` makes batch norm always use the statistics of the batch at hand
    (per task, as in the MAML reference code) and keeps no buffers.
    """
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1),
                               nn.BatchNorm2d(cout, track_running_stats=track_running_stats), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """The Conv-4 embedding of Vinyals et al. 2016 / Snell et al. 2017: four conv blocks of ``hidden``
    filters, flattened. On 28x28 Omniglot the output is 64-d. Inputs too small for four 2x2 pools
    (scikit-learn's 8x8 digits) skip the pools that would shrink a side below 1.
    """

    def __init__(self, image_shape: tuple[int, int, int], hidden: int = 64, depth: int = 4,
                 track_running_stats: bool = True) -> None:
        super().__init__()
        c, h, w = image_shape
        blocks, side = [], min(h, w)
        for i in range(depth):
            pool = side >= 2
            blocks.append(conv_block(c if i == 0 else hidden, hidden, pool, track_running_stats))
            side = side // 2 if pool else side
        self.blocks = nn.Sequential(*blocks)
        with torch.no_grad():
            self.out_dim = self.blocks(torch.zeros(2, *image_shape)).flatten(1).shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, C, H, W]`` -> ``[M, D]``."""
        return self.blocks(x).flatten(1)
