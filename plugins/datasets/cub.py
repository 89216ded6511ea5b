"""CUB-200-2011 birds, 84x84 RGB, Chen et al.'s 100 / 50 / 50 class split.

Images: Wah, Branson, Welinder, Perona & Belongie (2011), "The Caltech-UCSD Birds-200-2011 Dataset",
CNS-TR-2011-001. Split: Chen, Liu, Kira, Wang & Huang (2019), "A Closer Look at Few-shot
Classification", ICLR -- its ``filelists/CUB/write_CUB_filelist.py`` sorts the 200 class folders of
``CUB_200_2011/images/`` by name and takes class ``i`` into ``base`` (train) when ``i % 2 == 0``, ``val``
when ``i % 4 == 1`` and ``novel`` (test) when ``i % 4 == 3``. No split file is needed. Whole images,
resized to 84x84 with Lanczos (no bounding-box crop), as the cross-domain papers use them with Conv-4.

Reads ``<data root>/CUB_200_2011/images/<NNN.Name>/*.jpg`` (also under ``<data root>/CUB/``), the
layout of the official ``CUB_200_2011.tgz``. A folder with other than 200 classes is refused as partial.
"""
from __future__ import annotations

from pathlib import Path

from metabench import PluginError, hookimpl
from metabench.toolkit.image_formats import (NaturalImages, find_first, folder_fingerprint, image_folder,
                                             read_image_file, stack)

WHO = "cub"
CLASSES = 200


def _how_to(root: Path) -> str:
    return (f"Set --data-root or METABENCH_DATA to a folder holding CUB_200_2011/images/<NNN.Name>/*.jpg (the "
            f"extracted CUB_200_2011.tgz; {CLASSES} class folders) (data root: {root})")


def chen_split(classes: list[str]) -> dict[str, list[str]]:
    """Chen et al.'s rule on the sorted class folders: train i%2==0, val i%4==1, test i%4==3."""
    ordered = sorted(classes)
    return {"train": [c for i, c in enumerate(ordered) if i % 2 == 0],
            "val": [c for i, c in enumerate(ordered) if i % 4 == 1],
            "test": [c for i, c in enumerate(ordered) if i % 4 == 3]}


class CUB(NaturalImages):
    """CUB-200-2011, 84x84 RGB, Chen et al.'s 100/50/50 class split."""

    name = "cub"
    description = "CUB-200-2011 birds, 84x84 RGB, Chen et al. (2019) class split (100/50/50 classes)"
    paper = ("Wah et al. (2011), The Caltech-UCSD Birds-200-2011 Dataset; split: Chen et al. (2019), A Closer "
             "Look at Few-shot Classification, ICLR")
    defaults = {"size": 84}
    protocol = "chen-by-class"

    def sources(self, root, options):
        """The class folders of ``CUB_200_2011/images``; all 200 must be there and none empty."""
        images = find_first([root / "CUB_200_2011" / "images", root / "CUB" / "CUB_200_2011" / "images"],
                            f"{WHO}: image folder", _how_to(root), is_dir=True)
        folders = image_folder(images)
        empty = [c for c, files in folders.items() if not files]
        if len(folders) != CLASSES or empty:
            raise PluginError(f"{WHO}: {images} holds {len(folders)} class folders ({len(empty)} empty: "
                              f"{empty[:3]}); expected {CLASSES}, none empty -- the dataset is partial. "
                              + _how_to(root))
        split = chen_split(list(folders))

        def decode(size: int) -> dict:
            return {s: [(c, stack([read_image_file(p, size, WHO) for p in folders[c]], size)) for c in names]
                    for s, names in split.items()}
        return folder_fingerprint(images), decode


@hookimpl
def metabench_datasets():
    """The CUB dataset plugin."""
    return [CUB]
