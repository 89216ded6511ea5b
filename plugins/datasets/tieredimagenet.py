"""tieredImageNet, 84x84 RGB, Ren et al.'s split by ImageNet super-category (351 / 97 / 160 classes).

Ren, Triantafillou, Ravi, Snell, Swersky, Tenenbaum, Larochelle & Zemel (2018), "Meta-Learning for
Semi-Supervised Few-Shot Classification", ICLR (github.com/renmengye/few-shot-ssl-public): 608 ImageNet
classes grouped into 34 categories, 20 / 6 / 8 categories for train / val / test, so test classes are
semantically far from training ones.

Read from ``<data root>/tiered-imagenet/`` (or ``tieredImagenet/``, ``tiered_imagenet/``,
``tieredimagenet/``), in the layouts people have:

* Ren et al.'s pickles: ``{split}_images_png.pkl`` (a list of PNG-encoded images) and
  ``{split}_labels.pkl`` (a dict with ``label_specific``, and ``label_specific_str`` for class names);
* the ``.npz`` variant: ``{split}_images.npz`` (``images`` uint8 ``[N, 84, 84, 3]``) with the same labels
  pickles;
* an ImageFolder ``{split}/<class>/<image>``.

The split is the files' own (one set per split); classes keep the order of ``label_specific``.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from metabench import DatasetNotFoundError, PluginError, hookimpl
from metabench.toolkit.image_formats import (SPLITS, NaturalImages, decode_image, find_first, folder_fingerprint,
                                             image_folder, read_image_file, read_pickle, require_keys, resize_batch,
                                             stack)

FOLDERS = ("tiered-imagenet", "tieredImagenet", "tiered_imagenet", "tieredimagenet")
WHO = "tieredimagenet"


def _how_to(root: Path) -> str:
    return (f"Set --data-root or METABENCH_DATA to a folder holding tiered-imagenet/ with, per split "
            f"(train, val, test), either {{split}}_images_png.pkl or {{split}}_images.npz together with "
            f"{{split}}_labels.pkl (Ren et al.'s files), or an image folder {{split}}/<class>/<image> "
            f"(data root: {root})")


def _labels(path: Path) -> tuple[np.ndarray, list[str] | None]:
    d = require_keys(read_pickle(path, WHO), ("label_specific",), path, WHO)
    y = np.asarray(d["label_specific"], dtype=np.int64)
    names = d.get("label_specific_str")
    return y, (None if names is None else [n.decode() if isinstance(n, bytes) else str(n) for n in names])


def _images(path: Path, count: int, size: int) -> list[np.ndarray] | np.ndarray:
    """A split's images, ``[count, size, size, 3]`` uint8, from the png pickle or the npz."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                x = np.asarray(z["images"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise PluginError(f"{WHO}: cannot read {path} ({type(exc).__name__}: {exc}); expected an npz with "
                              f"'images' uint8 [N, 84, 84, 3] -- the file may be truncated") from exc
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
            raise PluginError(f"{WHO}: {path}: 'images' should be uint8 [N, H, W, 3], got {x.dtype} {x.shape}")
        out = resize_batch(x, size)
    else:
        pngs = read_pickle(path, WHO)
        if not isinstance(pngs, (list, tuple, np.ndarray)):
            raise PluginError(f"{WHO}: {path} should hold a list of PNG-encoded images, got {type(pngs).__name__}")
        out = stack([decode_image(b, size, f"{path}[{i}]", WHO) for i, b in enumerate(pngs)], size)
    if len(out) != count:
        raise PluginError(f"{WHO}: {path} holds {len(out)} images but its labels pickle {count} labels")
    return out


def _from_pickles(files: dict[str, tuple[Path, Path]]):
    def decode(size: int) -> dict:
        parts = {}
        for s, (img_path, label_path) in files.items():
            y, names = _labels(label_path)
            x = _images(img_path, len(y), size)
            parts[s] = []
            for c in np.unique(y):  # classes in label order, images in file order
                name = names[c] if names is not None and c < len(names) else f"{s}-{c}"
                parts[s].append((name, x[np.flatnonzero(y == c)]))
        return parts
    return decode


def _from_folders(folders: dict[str, Path]):
    def decode(size: int) -> dict:
        return {s: [(c, stack([read_image_file(p, size, WHO) for p in files], size))
                    for c, files in image_folder(folder).items() if files]
                for s, folder in folders.items()}
    return decode


class TieredImageNet(NaturalImages):
    """tieredImageNet, 84x84 RGB, Ren et al.'s 351/97/160-class split by super-category."""

    name = "tieredimagenet"
    description = "tieredImageNet, 84x84 RGB, Ren et al. split by super-category (351/97/160 classes)"
    paper = ("Ren et al. (2018), Meta-Learning for Semi-Supervised Few-Shot Classification, ICLR")
    defaults = {"size": 84}
    protocol = "ren-by-category"

    def sources(self, root, options):
        """Per split, the png pickle or the npz with the labels pickle; else the image folders."""
        base = find_first([root / f for f in FOLDERS], f"{WHO}: folder", _how_to(root), is_dir=True)
        if all((base / s).is_dir() for s in SPLITS) and not (base / "train_labels.pkl").exists():
            folders = {s: base / s for s in SPLITS}
            return [f for s in SPLITS for f in folder_fingerprint(folders[s])], _from_folders(folders)
        files = {}
        for s in SPLITS:
            images = find_first([base / f"{s}_images_png.pkl", base / f"{s}_images.npz"], f"{WHO}: {s} images",
                                _how_to(root))
            labels = base / f"{s}_labels.pkl"
            if not labels.is_file():
                raise DatasetNotFoundError(f"{WHO}: {labels} not found (the labels of {images}). " + _how_to(root))
            files[s] = (images, labels)
        return [p for pair in files.values() for p in pair], _from_pickles(files)


@hookimpl
def metabench_datasets():
    """The tieredImageNet dataset plugin."""
    return [TieredImageNet]
