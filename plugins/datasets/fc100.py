"""FC100, 32x32 RGB: CIFAR-100 split by superclass, 12 / 4 / 4 superclasses (60 / 20 / 20 classes).

Oreshkin, Rodríguez López & Lacoste (2018), "TADAM: Task dependent adaptive metric for improved few-shot
learning", NeurIPS (github.com/ElementAI/TADAM). Splitting by superclass keeps test classes semantically
apart from training ones, unlike CIFAR-FS. Images: Krizhevsky (2009), CIFAR-100 (train and test pooled,
600 per class).

Reads CIFAR-100's own python pickles ``<data root>/cifar-100-python/{train,test,meta}`` (the coarse labels
give the superclasses). The split: ``splits/fc100/{train,val,test}.json`` or ``.txt`` (superclass names, as
torchmeta ships them) when present, else Oreshkin et al.'s superclass indices, built in below (train 1, 2,
3, 4, 5, 6, 9, 10, 15, 17, 18, 19; val 8, 11, 13, 16; test 0, 7, 12, 14). Classes are ordered by the
split's superclasses, then by CIFAR-100's fine label.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from metabench import DatasetNotFoundError, PluginError, hookimpl
from metabench.toolkit.image_formats import (SPLITS, NaturalImages, disjoint, read_cifar100, read_class_list,
                                             resize_batch)

WHO = "fc100"
#: Oreshkin et al.'s split, as CIFAR-100 coarse label indices.
ORESHKIN = {"train": [1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19], "val": [8, 11, 13, 16], "test": [0, 7, 12, 14]}


def _how_to(root: Path) -> str:
    return (f"Set --data-root or METABENCH_DATA to a folder holding cifar-100-python/{{train,test,meta}} (the "
            f"CIFAR-100 python version); the superclass split is built in, or read from "
            f"splits/fc100/{{train,val,test}}.json (data root: {root})")


def split_lists(root: Path) -> tuple[dict[str, list[str]] | None, list[Path]]:
    """The superclass names per split from ``splits/fc100/`` (``None`` when there are no such files: the
    built-in split is used); a partial set of files names the missing one."""
    folder = root / "splits" / "fc100"
    found = {s: next((folder / f"{s}{e}" for e in (".json", ".txt") if (folder / f"{s}{e}").is_file()), None)
             for s in SPLITS}
    if not any(found.values()):
        return None, []
    missing = [str(folder / f"{s}.json") for s, p in found.items() if p is None]
    if missing:
        raise DatasetNotFoundError(f"{WHO}: split file(s) {', '.join(missing)} not found beside the others. "
                                   + _how_to(root))
    return disjoint({s: list(read_class_list(p, WHO)) for s, p in found.items()}, WHO), list(found.values())


def decode(src: Path, lists: dict[str, list[str]] | None, size: int) -> dict:
    """``{split: [(fine class, images)]}`` of the superclasses of each split."""
    c = read_cifar100(src, WHO)
    coarse_index = {n: i for i, n in enumerate(c["coarse_names"])}
    if lists is None:
        supers = ORESHKIN
    else:
        unknown = sorted({n for names in lists.values() for n in names} - set(coarse_index))
        if unknown:
            raise PluginError(f"{WHO}: the split lists name superclasses CIFAR-100 does not have: {unknown[:5]}")
        supers = {s: [coarse_index[n] for n in names] for s, names in lists.items()}
    parts = {}
    for s in SPLITS:
        parts[s] = []
        for sup in supers[s]:
            for fine in np.unique(c["fine"][c["coarse"] == sup]):
                parts[s].append((c["fine_names"][fine], resize_batch(c["images"][c["fine"] == fine], size)))
    return parts


class FC100(NaturalImages):
    """FC100, 32x32 RGB, Oreshkin et al.'s superclass split of CIFAR-100."""

    name = "fc100"
    description = "FC100, 32x32 RGB, CIFAR-100 split by superclass as Oreshkin et al. (12/4/4 superclasses, 60/20/20 classes)"
    paper = ("Oreshkin, Rodríguez López & Lacoste (2018), TADAM: Task dependent adaptive metric for improved "
             "few-shot learning, NeurIPS; images: Krizhevsky (2009), CIFAR-100")
    defaults = {"size": 32}
    protocol = "oreshkin-by-superclass"

    def sources(self, root, options):
        """CIFAR-100's pickles and, if present, the split lists."""
        src = root / "cifar-100-python"
        missing = [str(src / f) for f in ("train", "test", "meta") if not (src / f).is_file()]
        if missing:
            raise DatasetNotFoundError(f"{WHO}: {', '.join(missing)} not found. " + _how_to(root))
        lists, list_files = split_lists(root)
        return [src / f for f in ("train", "test", "meta")] + list_files, lambda size: decode(src, lists, size)


@hookimpl
def metabench_datasets():
    """The FC100 dataset plugin."""
    return [FC100]
