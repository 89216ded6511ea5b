"""miniImageNet, 84x84 RGB, Ravi & Larochelle's class split (64 train / 16 val / 20 test classes, 600 images each).

Vinyals et al. (2016), "Matching Networks for One Shot Learning", NeurIPS, defined miniImageNet; the split
used by every later paper is Ravi & Larochelle (2017), "Optimization as a Model for Few-Shot Learning",
ICLR (github.com/twitter/meta-learning-lstm: ``{train,val,test}.csv``, rows ``filename,label``).

Read from ``<data root>/miniImagenet/`` (or ``mini-imagenet/``, ``miniimagenet/``), in either layout:

* the pickle caches ``mini-imagenet-cache-{train,val,test}.pkl`` (dicts with ``image_data`` uint8
  ``[N, 84, 84, 3]`` and ``class_dict`` ``{wnid: [indices]}``); where the split CSVs are found too, each
  pickle's classes must be that split's;
* images named as in the CSVs under ``images/`` (Ravi's flat folder), ``images/<wnid>/`` or
  ``<split>/<wnid>/`` (ImageFolder), with the CSVs in ``splits/miniImagenet/ravi/`` or beside the images.
  Images of another size are resized to 84x84 with Lanczos, as Ravi & Larochelle's script does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from metabench import DatasetNotFoundError, PluginError, hookimpl
from metabench.toolkit.image_formats import (SPLITS, NaturalImages, find_first, folder_fingerprint, read_image_file,
                                             read_pickle, read_split_csv, require_keys, resize_batch, stack)

FOLDERS = ("miniImagenet", "mini-imagenet", "miniimagenet")
PICKLE = "mini-imagenet-cache-{}.pkl"


def _how_to(root: Path) -> str:
    return (f"Set --data-root or METABENCH_DATA to a folder holding miniImagenet/ with either "
            f"mini-imagenet-cache-{{train,val,test}}.pkl, or the images (images/<filename>, images/<wnid>/"
            f"<filename> or <split>/<wnid>/<filename>) and Ravi & Larochelle's {{train,val,test}}.csv in "
            f"splits/miniImagenet/ravi/ or miniImagenet/ (data root: {root})")


def split_csvs(root: Path, base: Path | None, required: bool) -> dict[str, Path] | None:
    """The three split CSVs (``splits/miniImagenet/ravi/`` first, then beside the data); ``None`` when
    none exists and they are not ``required``; a missing one is named otherwise."""
    folders = [root / "splits" / "miniImagenet" / "ravi"] + ([base] if base is not None else [])
    found = {s: next((f / f"{s}.csv" for f in folders if (f / f"{s}.csv").is_file()), None) for s in SPLITS}
    if not required and not any(found.values()):
        return None
    for s, path in found.items():
        if path is None:
            raise DatasetNotFoundError("miniimagenet: split file not found; looked for "
                                       + ", ".join(str(f / f"{s}.csv") for f in folders) + ". " + _how_to(root))
    return found  # type: ignore[return-value]


def _classes(rows: list[tuple[str, str]]) -> dict[str, list[str]]:
    """CSV rows -> ``{wnid: [filenames]}`` in file order."""
    out: dict[str, list[str]] = {}
    for filename, label in rows:
        out.setdefault(label, []).append(filename)
    return out


def _from_pickles(pickles: dict[str, Path], csvs: dict[str, Path] | None):
    def decode(size: int) -> dict:
        parts = {}
        for s, path in pickles.items():
            d = require_keys(read_pickle(path, "miniimagenet"), ("image_data", "class_dict"), path, "miniimagenet")
            x = np.asarray(d["image_data"])
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
                raise PluginError(f"miniimagenet: {path}: image_data should be uint8 [N, H, W, 3], got "
                                  f"{x.dtype} {x.shape}")
            order = list(_classes(read_split_csv(csvs[s], "miniimagenet"))) if csvs else sorted(d["class_dict"])
            if csvs and sorted(order) != sorted(d["class_dict"]):
                raise PluginError(f"miniimagenet: the classes of {path} are not those of {csvs[s]} (Ravi & "
                                  f"Larochelle's {s} split)")
            parts[s] = [(w, resize_batch(x[np.asarray(d["class_dict"][w], dtype=np.int64)], size)) for w in order]
        return parts
    return decode


def _from_images(base: Path, csvs: dict[str, Path]):
    def path_of(split: str, wnid: str, filename: str) -> list[Path]:
        return [base / "images" / filename, base / "images" / wnid / filename, base / split / wnid / filename]

    def decode(size: int) -> dict:
        parts = {}
        for s in SPLITS:
            classes = _classes(read_split_csv(csvs[s], "miniimagenet"))
            parts[s] = []
            for wnid, files in classes.items():
                layout = next((i for i, p in enumerate(path_of(s, wnid, files[0])) if p.is_file()), None)
                if layout is None:
                    raise DatasetNotFoundError(
                        f"miniimagenet: image {files[0]} of {csvs[s]} not found; looked for "
                        + ", ".join(map(str, path_of(s, wnid, files[0]))) + ". " + _how_to(base.parent))
                parts[s].append((wnid, stack([read_image_file(path_of(s, wnid, f)[layout], size, "miniimagenet")
                                              for f in files], size)))
        return parts
    return decode


class MiniImageNet(NaturalImages):
    """miniImageNet, 84x84 RGB, Ravi & Larochelle's 64/16/20 class split."""

    name = "miniimagenet"
    description = "miniImageNet, 84x84 RGB, Ravi & Larochelle class split (64/16/20 classes of 600 images)"
    paper = ("Vinyals et al. (2016), Matching Networks for One Shot Learning, NeurIPS; split: Ravi & "
             "Larochelle (2017), Optimization as a Model for Few-Shot Learning, ICLR")
    defaults = {"size": 84}
    protocol = "ravi-by-class"

    def sources(self, root, options):
        """The pickles if any is there (all three then), else the image folder with the split CSVs."""
        base = find_first([root / f for f in FOLDERS], "miniimagenet: folder", _how_to(root), is_dir=True)
        pickles = {s: base / PICKLE.format(s) for s in SPLITS}
        if any(p.is_file() for p in pickles.values()):
            missing = [str(p) for p in pickles.values() if not p.is_file()]
            if missing:
                raise DatasetNotFoundError(f"miniimagenet: pickle cache incomplete: {', '.join(missing)} "
                                           f"missing. " + _how_to(root))
            csvs = split_csvs(root, base, required=False)
            return list(pickles.values()) + list((csvs or {}).values()), _from_pickles(pickles, csvs)
        csvs = split_csvs(root, base, required=True)
        return folder_fingerprint(base) + list(csvs.values()), _from_images(base, csvs)


@hookimpl
def metabench_datasets():
    """The miniImageNet dataset plugin."""
    return [MiniImageNet]
