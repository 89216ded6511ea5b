"""MNIST handwritten digits, 28x28, split by image as in CACTUs.

Source: LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied to document
recognition", Proc. IEEE 86(11) -- the original idx files, in torchvision's ``MNIST/raw/`` layout (``.gz``
or decompressed). Protocol: Hsu, Levine & Finn (2019), "Unsupervised Learning via Meta-Learning" (CACTUs),
ICLR: with only 10 classes MNIST is split by image, so ``train`` is the 60000 training images and ``test``
the 10000 test images, each holding all 10 digits.

The idx files are parsed here (gzip in memory; nothing is written under the data root) and the decoded
tensors cached under ``ctx.cache_dir``. Images are kept as stored (28x28 grey, strokes bright on 0), so
:meth:`MNIST.prepare_image` takes a 28x28 image to its grey levels unchanged: a PNG written from an MNIST
image comes back bit-exactly.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metabench import DataContext, Dataset, DatasetNotFoundError, ImageSet, PluginError, hookimpl
from metabench.toolkit.datacache import cached_tensors, cache_key

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DECODER_VERSION = 1
SIZE = 28


def find_file(raw: Path, stem: str) -> Path:
    """``raw/stem`` or ``raw/stem.gz``; :class:`DatasetNotFoundError` naming both when neither exists."""
    for cand in (raw / stem, raw / f"{stem}.gz"):
        if cand.is_file():
            return cand
    raise DatasetNotFoundError(
        f"mnist: neither {raw / stem} nor {raw / stem}.gz exists. Set --data-root or METABENCH_DATA to a "
        f"folder containing MNIST/raw/ with the four idx files (train-images-idx3-ubyte, "
        f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; .gz or decompressed), "
        f"e.g. as torchvision downloads them")


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte idx array (LeCun's format: magic ``0x0000 08 <ndim>``, big-endian sizes, data)."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise PluginError(f"mnist: {path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    body = 4 + 4 * ndim
    if len(data) - body != int(np.prod(shape)):
        raise PluginError(f"mnist: {path} holds {len(data) - body} bytes of data, header says {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=body).reshape(shape)


def _decode(paths: dict[str, tuple[Path, Path]]) -> dict[str, torch.Tensor]:
    """Train then test images ``[N, 1, 28, 28]`` and labels ``[N]``, plus the train count."""
    images, labels = [], []
    for part in ("train", "test"):
        x, y = (read_idx(p) for p in paths[part])
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise PluginError(f"mnist: {part} images {x.shape} and labels {y.shape} do not match")
        images.append(torch.from_numpy(x.copy()).unsqueeze(1))
        labels.append(torch.from_numpy(y.astype(np.int64)))
    return {"images": torch.cat(images), "labels": torch.cat(labels),
            "n_train": torch.tensor(len(labels[0]))}


class MNIST(Dataset):
    """MNIST, 28x28 grey digits, CACTUs protocol (split by image: 60000 train, 10000 test)."""

    name = "mnist"
    description = "MNIST handwritten digits, 28x28, split by image (60000 train / 10000 test) as in CACTUs"
    paper = ("LeCun, Bottou, Bengio & Haffner (1998), Gradient-based learning applied to document "
             "recognition, Proc. IEEE 86(11); protocol: Hsu, Levine & Finn (2019), Unsupervised Learning "
             "via Meta-Learning, ICLR")
    defaults: dict = {}
    augmentation = "handwriting"

    def load(self, ctx: DataContext) -> ImageSet:
        """Parse the idx files (or read them from ``ctx.cache_dir``) into one set with two splits."""
        root = Path(ctx.data_root)
        raw = root / "MNIST" / "raw"
        paths = {part: (find_file(raw, xs), find_file(raw, ys)) for part, (xs, ys) in FILES.items()}
        key = cache_key("mnist", DECODER_VERSION, [p for pair in paths.values() for p in pair], root=root)
        data = cached_tensors(Path(ctx.cache_dir), key, lambda: _decode(paths))
        n, n_train = len(data["labels"]), int(data["n_train"])
        splits = {"train": torch.arange(n_train), "test": torch.arange(n_train, n)}
        return ImageSet(self.name, data["images"], data["labels"], splits, protocol="cactus-by-image")

    def prepare_image(self, image: Image.Image, options: dict) -> torch.Tensor:
        """A 28x28 image, bright strokes on black as stored -> uint8 ``[1, 28, 28]`` (``convert("L")``, no
        resizing or inversion; :class:`PluginError` for another size)."""
        if image.size != (SIZE, SIZE):
            raise PluginError(f"mnist: expected a {SIZE}x{SIZE} image, got {image.size[0]}x{image.size[1]}")
        return torch.from_numpy(np.array(image.convert("L"), dtype=np.uint8)).unsqueeze(0)


@hookimpl
def metabench_datasets():
    """The MNIST dataset plugin."""
    return [MNIST]
