"""Reading the file formats natural-image few-shot datasets are distributed in, into the uint8 cache.

Dataset plugins (miniImageNet, tieredImageNet, CIFAR-FS, FC100, CUB ...) differ only in where their files
lie and how a class list is spelt; the reading is shared here:

* :func:`read_pickle` -- the community's pickle caches (Python 2 or 3, numpy arrays inside), through an
  unpickler that only rebuilds numpy arrays and plain containers; a truncated or foreign file is a
  :class:`PluginError` naming it.
* :func:`read_split_csv`, :func:`read_class_list` -- Ravi & Larochelle's ``filename,label`` CSVs; class
  lists as JSON (torchmeta's ``[[superclass, class], ...]`` or ``[name, ...]``) or one name per line.
* :func:`image_folder` -- torchvision's ImageFolder layout ``<root>/<class>/<image>``.
* :func:`decode_image`, :func:`to_rgb` -- image bytes or arrays to ``[size, size, 3]`` uint8 (Lanczos
  resize when the size differs, as Ravi & Larochelle's script makes 84x84 miniImageNet).
* :func:`find_first` -- the first of several candidate layouts, or a :class:`DatasetNotFoundError` naming
  every path looked for and how to provide the files.
* :func:`pack` / :func:`unpack` / :class:`NaturalImages` -- the classes of each split, decoded once, as one
  cached tensor dict, and back to an :class:`~metabench.contracts.ImageSet`.

Nothing here writes under the data root; the cache lives in ``DataContext.cache_dir``
(:mod:`metabench.toolkit.datacache`).
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from metabench.contracts import DataContext, Dataset, DatasetNotFoundError, ImageSet, PluginError
from metabench.toolkit.datacache import cache_key, cached_tensors

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
#: A class's images in decoding order: ``(class name, uint8 [n, size, size, 3])``.
ClassImages = tuple[str, np.ndarray]


# ------------------------------------------------------------------------------------------- files


def find_first(candidates: Sequence[Path], what: str, how: str, is_dir: bool = False) -> Path:
    """The first existing path of ``candidates``; else :class:`DatasetNotFoundError` listing them all,
    ``what`` was wanted, and ``how`` to provide it."""
    for c in candidates:
        if (c.is_dir() if is_dir else c.is_file()):
            return c
    raise DatasetNotFoundError(f"{what} not found; looked for " + ", ".join(str(c) for c in candidates)
                               + f". {how}")


def folder_fingerprint(folder: Path) -> list[Path]:
    """The paths whose size and mtime fingerprint an image folder cheaply: the folder and its subfolders
    (a folder's mtime changes when an entry is added, removed or renamed)."""
    out = [folder]
    for dirpath, dirnames, _ in os.walk(folder):
        dirnames.sort()
        out += [Path(dirpath) / d for d in dirnames]
    return out


def image_folder(root: Path) -> dict[str, list[Path]]:
    """torchvision's ImageFolder layout: ``{class folder name: sorted image paths}``, classes sorted."""
    out = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            files = sorted(Path(entry.path) / f for f in os.listdir(entry.path)
                           if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."))
            out[entry.name] = files
    return out


# ------------------------------------------------------------------------------------------ pickles


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, scalars and plain containers only: loading a downloaded cache never runs
    arbitrary code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
                ("numpy._core.numeric", "_frombuffer"), ("collections", "OrderedDict"),
                ("builtins", "bytearray"), ("__builtin__", "bytearray"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays and plain "
                                     f"containers are expected)")


def _plain_keys(obj: Any) -> Any:
    """Dict keys pickled by Python 2 as bytes (``b'data'``) -> str, recursively through dicts."""
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): _plain_keys(v) for k, v in obj.items()}
    return obj


def read_pickle(path: Path, who: str) -> Any:
    """Unpickle ``path`` (Python 2 pickles read with ``latin1``; dict keys made ``str``). A truncated,
    corrupt or unexpected file is a :class:`PluginError` naming it."""
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, MemoryError) as exc:
        raise PluginError(f"{who}: cannot read {path} ({type(exc).__name__}: {exc}); the file is truncated "
                          f"or not the expected pickle -- download it again") from exc
    return _plain_keys(obj)


def require_keys(obj: Any, keys: Iterable[str], path: Path, who: str) -> dict:
    """``obj`` if it is a dict holding every key of ``keys``; else a :class:`PluginError` naming ``path``."""
    keys = list(keys)
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        have = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise PluginError(f"{who}: {path} should hold a dict with keys {keys}, found {have}")
    return obj


# ------------------------------------------------------------------------------------- split files


def read_split_csv(path: Path, who: str) -> list[tuple[str, str]]:
    """Rows ``(filename, label)`` of a Ravi & Larochelle split CSV (header ``filename,label``)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise DatasetNotFoundError(f"{who}: cannot read split file {path}: {exc}") from exc
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise PluginError(f"{who}: {path} should start with the header 'filename,label'")
    out = []
    for n, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != 2 or not row[0] or not row[1]:
            raise PluginError(f"{who}: {path}:{n}: expected 'filename,label', got {','.join(row)!r}")
        out.append((row[0].strip(), row[1].strip()))
    return out


def read_class_list(path: Path, who: str) -> list:
    """A split's classes: JSON (a list of names, or of ``[superclass, class]`` pairs, kept as tuples) or a
    text file with one name per line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DatasetNotFoundError(f"{who}: cannot read split file {path}: {exc}") from exc
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PluginError(f"{who}: {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, list) or not data:
            raise PluginError(f"{who}: {path} should hold a non-empty JSON list of classes")
        return [tuple(c) if isinstance(c, list) else c for c in data]
    names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names:
        raise PluginError(f"{who}: {path} lists no classes")
    return names


# ----------------------------------------------------------------------------------------- images


def to_rgb(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """An image (PIL, or an ``[H, W]`` / ``[H, W, 3]`` uint8 array) -> ``[size, size, 3]`` uint8 RGB,
    resized with Lanczos only when it is not already ``size`` x ``size``."""
    if isinstance(image, np.ndarray):
        arr = np.asarray(image, dtype=np.uint8)
        if arr.ndim == 3 and arr.shape == (size, size, 3):
            return arr
        image = Image.fromarray(arr)
    im = image.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def decode_image(data: bytes | np.ndarray | str, size: int, where: str, who: str) -> np.ndarray:
    """Encoded image bytes (PNG/JPEG; also a uint8 array of them, or a Python 2 ``str`` read as latin1)
    -> ``[size, size, 3]`` uint8. An undecodable image is a :class:`PluginError` naming ``where``."""
    if isinstance(data, np.ndarray):
        data = data.tobytes()
    elif isinstance(data, str):
        data = data.encode("latin1")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return to_rgb(im, size)
    except (OSError, ValueError, SyntaxError) as exc:
        raise PluginError(f"{who}: cannot decode the image {where}: {exc}") from exc


def read_image_file(path: Path, size: int, who: str) -> np.ndarray:
    """One image file -> ``[size, size, 3]`` uint8; a missing or broken file is named in the error."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetNotFoundError(f"{who}: cannot read image {path}: {exc}") from exc
    return decode_image(data, size, str(path), who)


def stack(arrays: list[np.ndarray], size: int) -> np.ndarray:
    """A list of ``[size, size, 3]`` images -> ``[n, size, size, 3]`` (an empty list gives ``n = 0``)."""
    return np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """``[n, H, W, 3]`` uint8 -> ``[n, size, size, 3]`` (unchanged when already that size)."""
    if images.shape[1:3] == (size, size):
        return np.ascontiguousarray(images, dtype=np.uint8)
    return stack([to_rgb(im, size) for im in images], size)


def read_cifar100(folder: Path, who: str) -> dict[str, Any]:
    """CIFAR-100's own python pickles (``train``, ``test``, ``meta`` in ``cifar-100-python/``), train then
    test: ``images`` ``[60000, 32, 32, 3]`` uint8, ``fine`` / ``coarse`` int64 labels, ``fine_names`` /
    ``coarse_names`` (from ``meta``)."""
    images, fine, coarse = [], [], []
    for part in ("train", "test"):
        path = folder / part
        d = require_keys(read_pickle(path, who), ("data", "fine_labels", "coarse_labels"), path, who)
        x = np.asarray(d["data"], dtype=np.uint8)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(d["fine_labels"]) != len(x):
            raise PluginError(f"{who}: {path}: 'data' should be [N, 3072] uint8 with N fine labels, got "
                              f"{x.shape} and {len(d['fine_labels'])} labels")
        images.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        fine.append(np.asarray(d["fine_labels"], dtype=np.int64))
        coarse.append(np.asarray(d["coarse_labels"], dtype=np.int64))
    meta_path = folder / "meta"
    meta = require_keys(read_pickle(meta_path, who), ("fine_label_names", "coarse_label_names"), meta_path, who)
    plain = lambda names: [n.decode() if isinstance(n, bytes) else str(n) for n in names]  # noqa: E731
    return {"images": np.concatenate(images), "fine": np.concatenate(fine), "coarse": np.concatenate(coarse),
            "fine_names": plain(meta["fine_label_names"]), "coarse_names": plain(meta["coarse_label_names"])}


CIFAR100_FILES = ("train", "test", "meta")


def cifar100_source(root: Path, who: str, how: str) -> tuple[Path, list[Path]]:
    """CIFAR-100 under ``root``: the python pickles ``cifar-100-python/{train,test,meta}``, else an image
    folder ``cifar100/data/<class>/<image>`` (Bertinetto et al.'s CIFAR-FS layout). Returns the folder and
    the paths that fingerprint it; :class:`DatasetNotFoundError` naming what is missing."""
    pickles, folder = root / "cifar-100-python", root / "cifar100" / "data"
    if pickles.is_dir():
        missing = [str(pickles / f) for f in CIFAR100_FILES if not (pickles / f).is_file()]
        if missing:
            raise DatasetNotFoundError(f"{who}: CIFAR-100 incomplete: {', '.join(missing)} not found. {how}")
        return pickles, [pickles / f for f in CIFAR100_FILES]
    if folder.is_dir():
        return folder, folder_fingerprint(folder)
    raise DatasetNotFoundError(f"{who}: CIFAR-100 not found; looked for {pickles} and {folder}. {how}")


def cifar100_classes(src: Path, wanted: dict[str, list[str]], size: int, who: str) -> dict[str, list[ClassImages]]:
    """``{split: [(fine class, images [600, size, size, 3])]}`` for the fine class names of ``wanted``, from
    :func:`cifar100_source`'s folder (train and test images of a class pooled, train first)."""
    if src.name == "cifar-100-python":
        c = read_cifar100(src, who)
        index: dict = {n: i for i, n in enumerate(c["fine_names"])}
        get = lambda name: resize_batch(c["images"][c["fine"] == index[name]], size)  # noqa: E731
    else:
        index = image_folder(src)
        get = lambda name: stack([read_image_file(p, size, who) for p in index[name]], size)  # noqa: E731
    missing = sorted({n for names in wanted.values() for n in names} - set(index))
    if missing:
        raise PluginError(f"{who}: the split lists name classes that {src} does not have: {missing[:5]}")
    return {s: [(n, get(n)) for n in names] for s, names in wanted.items()}


def disjoint(splits: dict[str, list], who: str) -> dict[str, list]:
    """``splits`` unchanged if no class is in two of them; else a :class:`PluginError` naming the overlap."""
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = set(splits[a]) & set(splits[b])
            if both:
                raise PluginError(f"{who}: splits {a} and {b} share classes {sorted(both)[:5]}")
    return splits


def split_files(folders: Sequence[Path], suffixes: Sequence[str], who: str, how: str) -> dict[str, Path]:
    """For each of :data:`SPLITS`, the first ``<folder>/<split><suffix>`` that exists; a missing split is a
    :class:`DatasetNotFoundError` naming every candidate."""
    out = {}
    for s in SPLITS:
        cands = [Path(f) / f"{s}{ext}" for f in folders for ext in suffixes]
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            raise DatasetNotFoundError(f"{who}: split file not found; looked for "
                                       + ", ".join(map(str, cands)) + f". {how}")
        out[s] = hit
    return out


# ------------------------------------------------------------------------------------- the cache


def pack(parts: dict[str, list[ClassImages]]) -> dict[str, torch.Tensor]:
    """The classes of each split (in split order, then class order) as the cache's tensors: ``images``
    uint8 ``[N, 3, H, W]``, ``labels`` ``[N]``, ``split_classes`` (classes per split, in :data:`SPLITS`
    order) and ``names`` (the class names, utf-8, newline-separated). The lists in ``parts`` are emptied
    as they are copied, so a large dataset is held about once, not twice."""
    classes = [c for split in SPLITS for c in parts.get(split, [])]
    if not classes:
        raise PluginError("no classes to pack: the dataset's splits are empty")
    total = sum(len(x) for _, x in classes)
    h, w, c = classes[0][1].shape[1:]
    images = torch.empty(total, c, h, w, dtype=torch.uint8)
    labels = torch.empty(total, dtype=torch.int64)
    names, counts, start = [], [len(parts.get(split, [])) for split in SPLITS], 0
    del classes
    for split in SPLITS:
        todo = parts.get(split, [])
        while todo:
            name, x = todo.pop(0)
            n = len(x)
            images[start:start + n] = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
            labels[start:start + n] = len(names)
            names.append(str(name))
            start += n
    blob = torch.frombuffer(bytearray("\n".join(names).encode()), dtype=torch.uint8)
    return {"images": images, "labels": labels, "split_classes": torch.tensor(counts), "names": blob}


def unpack(name: str, data: dict[str, torch.Tensor], protocol: str) -> ImageSet:
    """An :class:`ImageSet` from :func:`pack`'s tensors: splits by class, empty splits left out."""
    labels, splits, start = data["labels"], {}, 0
    for split, n in zip(SPLITS, data["split_classes"].tolist()):
        if n:
            splits[split] = ((labels >= start) & (labels < start + n)).nonzero().squeeze(1)
        start += n
    return ImageSet(name, data["images"], labels, splits, protocol=protocol)


def class_names(data: dict[str, torch.Tensor]) -> list[str]:
    """The class names :func:`pack` stored, in label order."""
    return bytes(data["names"].numpy()).decode().split("\n") if data["names"].numel() else []


class NaturalImages(Dataset):
    """Base of the natural-image dataset plugins: option ``size`` (the side images are decoded to), one
    cached decode of the sources, :meth:`prepare_image` by the same resize.

    A subclass sets ``name``, ``defaults`` (with ``size``), ``protocol`` and ``version`` and implements
    :meth:`sources` (the files found, raising :class:`DatasetNotFoundError` naming what it looked for)
    and :meth:`decode` (those files -> ``{split: [(class name, images [n, size, size, 3])]}``).
    """

    augmentation = "natural"
    protocol: ClassVar[str] = ""
    version: ClassVar[int] = 1  # the decoder's version: bump when decoding changes

    def sources(self, root: Path, options: dict[str, Any]) -> tuple[list[Path], Callable[[int], dict]]:
        """``(files to fingerprint, decode)`` where ``decode(size)`` gives the split's classes."""
        raise NotImplementedError

    def load(self, ctx: DataContext) -> ImageSet:
        """Find the sources, decode them once into ``ctx.cache_dir`` and return the split set."""
        size = ctx.options.get("size", self.defaults.get("size"))
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise PluginError(f"{self.name}: option size must be an integer >= 8, got {size!r}")
        root = Path(ctx.data_root)
        files, decode = self.sources(root, ctx.options)
        opts = {k: v for k, v in sorted(ctx.options.items())}
        key = cache_key(self.name, self.version, files, root=root, options=opts)
        data = cached_tensors(Path(ctx.cache_dir), key, lambda: pack(decode(size)))
        return unpack(self.name, data, self.protocol)

    def prepare_image(self, image: Image.Image, options: dict[str, Any]) -> torch.Tensor:
        """An outside image -> uint8 ``[3, size, size]``, resized as the dataset's own images are."""
        size = int(options.get("size", self.defaults.get("size")))
        return torch.from_numpy(to_rgb(image, size).copy()).permute(2, 0, 1).contiguous()
