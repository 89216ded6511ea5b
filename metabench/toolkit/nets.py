"""Backbones shared by the built-in algorithms: Conv-4 and ResNet-12, chosen by name with :func:`backbone`."""
from __future__ import annotations

from collections.abc import Callable

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


class ResBlock(nn.Module):
    """A ResNet-12 block: three 3x3 conv + batch norm layers (leaky ReLU 0.1 between them), a 1x1 conv +
    batch norm shortcut, leaky ReLU after the sum, then a 2x2 max-pool when ``pool``."""

    def __init__(self, cin: int, cout: int, pool: bool, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), norm(cout)]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), norm(cout))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, cin, H, W]`` -> ``[M, cout, H/2, W/2]`` (or ``H, W`` without the pool)."""
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


class ResNet12(nn.Module):
    """ResNet-12 of Oreshkin et al. 2018 (TADAM) and Lee et al. 2019 (MetaOptNet): four residual blocks of
    widths ``hidden`` x (1, 2.5, 5, 10) -- 64-160-320-640 at the default ``hidden = 64`` -- each halving
    the side, then global average pooling to a ``10 * hidden``-d feature (as in the RFS / FEAT code;
    MetaOptNet flattens instead). No DropBlock. ``norm`` builds each batch norm (``track_running_stats``
    applies to the default :class:`~torch.nn.BatchNorm2d`); inputs too small for four pools skip the pools
    that would shrink a side below 1, as :class:`Conv4` does.
    """

    def __init__(self, image_shape: tuple[int, int, int], hidden: int = 64, track_running_stats: bool = True,
                 norm: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        norm = norm or (lambda c: nn.BatchNorm2d(c, track_running_stats=track_running_stats))
        c, h, w = image_shape
        widths = [hidden, round(2.5 * hidden), 5 * hidden, 10 * hidden]
        blocks, side = [], min(h, w)
        for i, width in enumerate(widths):
            pool = side >= 2
            blocks.append(ResBlock(c if i == 0 else widths[i - 1], width, pool, norm))
            side = side // 2 if pool else side
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, C, H, W]`` -> ``[M, 10 * hidden]``."""
        return self.blocks(x).mean(dim=(2, 3))


BACKBONES = ("conv4", "resnet12")


def backbone(name: str, image_shape: tuple[int, int, int], hidden: int = 64, track_running_stats: bool = True,
             norm: Callable[[int], nn.Module] | None = None) -> nn.Module:
    """The embedding network ``name`` (:data:`BACKBONES`) for images of ``image_shape``, with an ``out_dim``
    attribute: ``conv4`` (:class:`Conv4`, ``hidden`` filters; ``norm`` replaces its batch norms) or
    ``resnet12`` (:class:`ResNet12`, widths ``hidden`` x (1, 2.5, 5, 10)). ``ValueError`` for another name."""
    if name == "conv4":
        net = Conv4(image_shape, hidden=hidden, track_running_stats=track_running_stats)
        if norm is not None:
            for block in net.blocks:  # same parameter names and initial values (ones, zeros)
                block[1] = norm(block[1].num_features)
        return net
    if name == "resnet12":
        return ResNet12(image_shape, hidden=hidden, track_running_stats=track_running_stats, norm=norm)
    raise ValueError(f"unknown backbone {name!r}; known: {list(BACKBONES)}")
