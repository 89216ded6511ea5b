"""scikit-learn's 8x8 handwritten digits: a tiny, always-available dataset for smoke tests and demos.

Source: Alpaydin & Kaynak (1998), "Optical Recognition of Handwritten Digits" (UCI ML repository), the
test part of which ships with scikit-learn as ``sklearn.datasets.load_digits`` (1797 images, 8x8, values
0..16). Needs no data root. Split by image, stratified by class, as in the CACTUs MNIST protocol (Hsu,
Levine & Finn, 2019): a fixed 2/3 of each class for ``train``, the rest for ``test``.

Grey levels: a source value ``v`` in 0..16 (bright strokes on 0) becomes ``round(v * 255 / 16)``, one of
17 uint8 levels (0, 16, 32, ..., 239, 255). :meth:`Digits.prepare_image` reads an 8x8 grey image on that
0..255 scale (a PNG written from the plugin's tensor), snaps each pixel to the nearest source value
``round(p * 16 / 255)`` and applies the same scaling: the plugin's levels come back unchanged, any other
grey lands on the nearest level. (A PNG of the raw 0..16 values would read as near-black: scale it first.)
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from metabench import DataContext, Dataset, ImageSet, PluginError, hookimpl

SPLIT_SEED = 20190506  # fixed: the split is part of the protocol, not of a run
TRAIN_FRACTION = 2 / 3
SIZE = 8
LEVELS = 16  # source values are 0..16


def to_uint8(values: torch.Tensor) -> torch.Tensor:
    """Source values 0..16 (any dtype) -> uint8 ``round(v * 255 / 16)``."""
    return torch.round(values.to(torch.float64) * 255 / LEVELS).clamp(0, 255).to(torch.uint8)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, test) indices: per class, a seeded permutation's first ``round(fraction * n)``."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        cut = round(fraction * len(idx))
        train.append(idx[:cut])
        test.append(idx[cut:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


class Digits(Dataset):
    """scikit-learn digits, 8x8, split by image (2/3 train, 1/3 test per class)."""

    name = "digits"
    description = "scikit-learn 8x8 handwritten digits (1797 images), split by image 2/3 train / 1/3 test"
    paper = ("Alpaydin & Kaynak (1998), Optical Recognition of Handwritten Digits, UCI Machine Learning "
             "Repository; protocol after Hsu, Levine & Finn (2019), Unsupervised Learning via "
             "Meta-Learning, ICLR")
    defaults: dict = {}
    augmentation = "small_handwriting"
    smoke_partner = {}  # small and bundled: the dataset other plugins are checked on

    def load(self, ctx: DataContext) -> ImageSet:
        """Load the bundled digits (``ctx`` paths unused), scale 0..16 to 0..255 uint8, split them."""
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = to_uint8(torch.from_numpy(bunch.images)).unsqueeze(1)
        labels = torch.from_numpy(bunch.target).to(torch.int64)
        train, test = stratified_split(labels, TRAIN_FRACTION, SPLIT_SEED)
        return ImageSet(self.name, images, labels, {"train": train, "test": test}, protocol="cactus-by-image")

    def prepare_image(self, image: Image.Image, options: dict) -> torch.Tensor:
        """An 8x8 grey image on the 0..255 scale -> uint8 ``[1, 8, 8]`` on the 17 levels of the dataset
        (see the module docstring); :class:`PluginError` for another size."""
        if image.size != (SIZE, SIZE):
            raise PluginError(f"digits: expected an {SIZE}x{SIZE} image, got {image.size[0]}x{image.size[1]}")
        grey = torch.from_numpy(np.array(image.convert("L"), dtype=np.float64))
        return to_uint8(torch.round(grey * LEVELS / 255)).unsqueeze(0)


@hookimpl
def metabench_datasets():
    """The digits dataset plugin."""
    return [Digits]
