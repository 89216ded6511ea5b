"""CIFAR-FS, 32x32 RGB: CIFAR-100's 100 classes split 64 / 16 / 20 at random, 600 images each.

Bertinetto, Henriques, Torr & Vedaldi (2019), "Meta-learning with differentiable closed-form solvers",
ICLR (github.com/bertinetto/r2d2). Images: Krizhevsky (2009), "Learning Multiple Layers of Features from
Tiny Images" -- CIFAR-100, train and test images of a class pooled (500 + 100).

Reads CIFAR-100's own python pickles, ``<data root>/cifar-100-python/{train,test,meta}``, or Bertinetto's
image folder ``<data root>/cifar100/data/<class>/<image>.png``. The split lists:
``splits/cifar-fs/bertinetto/{train,val,test}.json`` (torchmeta's ``[[superclass, class], ...]``) or
``.txt`` (one class per line, as in the r2d2 repository), under the data root (or ``cifar100/splits/
bertinetto/``). Option ``size`` resizes (Lanczos), e.g. to 84 to test a miniImageNet model on it.
"""
from __future__ import annotations

from pathlib import Path

from metabench import hookimpl
from metabench.toolkit.image_formats import (NaturalImages, cifar100_classes, cifar100_source, disjoint,
                                             read_class_list, split_files)

WHO = "cifar_fs"


def _how_to(root: Path) -> str:
    return (f"Set --data-root or METABENCH_DATA to a folder holding cifar-100-python/{{train,test,meta}} (the "
            f"CIFAR-100 python version) or cifar100/data/<class>/*.png, and the CIFAR-FS split lists "
            f"splits/cifar-fs/bertinetto/{{train,val,test}}.json or .txt (data root: {root})")


class CIFARFS(NaturalImages):
    """CIFAR-FS, 32x32 RGB, Bertinetto et al.'s 64/16/20 class split of CIFAR-100."""

    name = "cifar_fs"
    description = "CIFAR-FS, 32x32 RGB, Bertinetto et al. class split of CIFAR-100 (64/16/20 classes of 600 images)"
    paper = ("Bertinetto, Henriques, Torr & Vedaldi (2019), Meta-learning with differentiable closed-form "
             "solvers, ICLR; images: Krizhevsky (2009), CIFAR-100")
    defaults = {"size": 32}
    protocol = "bertinetto-by-class"

    def sources(self, root, options):
        """CIFAR-100 (pickles or folder) and the three split lists (a pair's fine class is the class)."""
        src, files = cifar100_source(root, WHO, _how_to(root))
        lists = split_files([root / "splits" / "cifar-fs" / "bertinetto", root / "cifar100" / "splits" / "bertinetto"],
                            (".json", ".txt"), WHO, _how_to(root))
        splits = disjoint({s: [c[-1] if isinstance(c, tuple) else c for c in read_class_list(p, WHO)]
                           for s, p in lists.items()}, WHO)
        return files + list(lists.values()), lambda size: cifar100_classes(src, splits, size, WHO)


@hookimpl
def metabench_datasets():
    """The CIFAR-FS dataset plugin."""
    return [CIFARFS]
