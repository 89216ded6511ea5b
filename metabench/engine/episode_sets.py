"""Episode sets: few-shot test episodes fixed by someone else, loaded so that a trained model can be scored
on exactly those episodes.

An episode set comes in one of two layouts. :func:`load_episodes` reads either into a list of
:class:`Episode`; :func:`stack_episodes` groups them into float :class:`~metabench.contracts.EpisodeBatch`
meta-batches for ``Algorithm.predict``; :func:`write_index_episodes` writes the JSON layout from the index
tensors of :func:`metabench.engine.evaluation.fixed_episode_indices`. Any fault in a set raises
:class:`EpisodeSetError` naming the file, the episode and the item.

1. JSON file
------------

A UTF-8 JSON object::

    {"format": "metabench-episodes",        # required, exactly this string
     "version": 1,                          # required, the integer 1
     "dataset": "omniglot",                 # optional string: the dataset the index items refer to
     "split": "test",                       # optional string, default "test": the split they index
     "episodes": [                          # required, a non-empty list
        {"support": [ITEM, ...],            # required, non-empty
         "query":   [ITEM, ...]},           # required, non-empty
        ...]}

An ``ITEM`` is one image, an object with a ``"class"`` and exactly one of ``"index"`` or ``"path"``:

* ``{"class": C, "index": I}``: image ``I`` (an integer, ``0 <= I < len(split)``) of the split named by
  ``"split"`` of the dataset; loading needs ``split=`` (a :class:`~metabench.contracts.LabeledSplit`).
* ``{"class": C, "path": "P"}``: the image file ``P`` (PNG, JPEG, BMP or any format Pillow reads),
  relative to the JSON file's folder unless absolute; loading needs ``prepare=`` (below).

Index and path items may be mixed. Other keys in an episode or an item are errors; other top-level keys
are ignored (room for provenance notes such as a seed). Class ids ``C`` are integers or strings,
arbitrary and local to each episode (the ids of one episode are all integers or all strings, never
mixed); the query's labels are not read from the dataset.

2. Folder layout
----------------

::

    DIR/<episode>/support/<class>/<image>.png     (also .jpg, .jpeg, .bmp; any case)
    DIR/<episode>/query/<class>/<image>.png

Episodes are the sub-folders of ``DIR`` in sorted name order (numerically where every name is an
integer, else lexically); ``DIR`` itself is one episode when it has ``support/`` and ``query/``. A class
folder's name is its class id (an ``int`` when every class name of the episode is an integer such as
``"7"``, else the string); images are taken in sorted file-name order. Names starting with ``.`` are
skipped, as are plain files directly in ``DIR`` or in an episode folder; anything else (a file directly
in ``support/`` or ``query/``, a folder or non-image file in a class folder, an empty class folder) is an
error. Every image needs ``prepare=``.

Rules for both layouts
----------------------

* Labels: an episode's support class ids, sorted (integers numerically, strings lexically), are
  labels ``0..N-1``. Every query class must be a support class (a support class may have no query).
* Every support class has the same number of shots ``K``. The query may be uneven: :attr:`Episode.queries`
  is the per-class ``Q`` when every class has the same number of query images, else ``None``.
* Order within an episode is class-major: support images sorted by label (stable: a class's images
  keep their order in the file or folder), likewise the query. An index set written by
  :func:`write_index_episodes` with ``labels=None`` therefore loads to exactly the layout of
  :func:`metabench.toolkit.episodes.batch_from_indices` on the same indices.
* ``prepare(image: PIL.Image.Image) -> torch.Tensor`` is supplied by the dataset (it knows its channel
  count, size and colour convention) and must return uint8 ``[C, H, W]``; any other result is a
  :class:`~metabench.contracts.PluginError`. All images of a set, index images included, must share one
  ``[C, H, W]`` shape.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metabench.atomic import write_atomic
from metabench.contracts import EpisodeBatch, LabeledSplit, PluginError
from metabench.toolkit.episodes import to_float

FORMAT = "metabench-episodes"
VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

ClassId = int | str
Prepare = Callable[[Any], torch.Tensor]


class EpisodeSetError(ValueError):
    """An episode set is malformed or cannot be loaded; the message names the file, episode and item."""


@dataclass(frozen=True, eq=False)
class Episode:
    """One fixed few-shot episode, on the CPU, class-major.

    ``support_x`` uint8 ``[N*K, C, H, W]``, ``support_y`` int64 ``[N*K]`` in ``0..N-1``; ``query_x`` uint8
    ``[M, C, H, W]``, ``query_y`` int64 ``[M]``. ``classes[label]`` is the set's own id of that label;
    ``queries`` is Q per class, or ``None`` when the query is uneven; ``source`` names the file and
    episode, or the episode folder.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int
    shots: int
    queries: int | None
    classes: tuple[ClassId, ...]
    source: str

    def __post_init__(self) -> None:
        n, k = self.ways, self.shots
        sx, sy, qx, qy = self.support_x, self.support_y, self.query_x, self.query_y
        ok = (len(self.classes) == n >= 1 and k >= 1
              and sx.dtype == qx.dtype == torch.uint8 and sx.dim() == qx.dim() == 4
              and sx.shape[0] == n * k and sx.shape[1:] == qx.shape[1:] and qx.shape[0] >= 1
              and sy.dtype == qy.dtype == torch.int64 and sy.shape == (n * k,) and qy.shape == (qx.shape[0],)
              and int(torch.cat([sy, qy]).min()) >= 0 and int(torch.cat([sy, qy]).max()) < n)
        if not ok:
            raise EpisodeSetError(f"{self.source}: inconsistent episode (ways={n}, shots={k}, "
                                  f"support {tuple(sx.shape)}, query {tuple(qx.shape)})")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of its images."""
        return tuple(self.support_x.shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True)
class EpisodeSetInfo:
    """What :func:`inspect_episodes` learns without loading images: the ``layout`` (``"json"`` or
    ``"folder"``), the ``dataset`` and ``split`` named (``""`` / ``"test"`` when not), the number of
    ``episodes``, and whether loading needs ``split=`` (index items) and ``prepare=`` (path items)."""

    path: Path
    layout: str
    dataset: str
    split: str
    episodes: int
    needs_split: bool
    needs_prepare: bool


# ------------------------------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class _Item:
    cls: ClassId
    where: str                 # e.g. "eps.json, episode 3, support item 2" or the image's path
    index: int | None = None
    path: Path | None = None


@dataclass(frozen=True)
class _RawEpisode:
    source: str
    support: list[_Item]
    query: list[_Item]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_item(raw: Any, where: str, folder: Path) -> _Item:
    if not isinstance(raw, dict):
        raise EpisodeSetError(f"{where}: an item must be an object with 'class' and 'index' or 'path', "
                              f"got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"class", "index", "path"})
    if unknown:
        raise EpisodeSetError(f"{where}: unknown key(s) {unknown} (an item has 'class' and 'index' or 'path')")
    if "class" not in raw:
        raise EpisodeSetError(f"{where}: item has no 'class'")
    cls = raw["class"]
    if not (_is_int(cls) or isinstance(cls, str)):
        raise EpisodeSetError(f"{where}: 'class' must be an integer or a string, got {cls!r}")
    if ("index" in raw) == ("path" in raw):
        raise EpisodeSetError(f"{where}: an item needs exactly one of 'index' and 'path'")
    if "index" in raw:
        idx = raw["index"]
        if not _is_int(idx) or idx < 0:
            raise EpisodeSetError(f"{where}: 'index' must be a non-negative integer, got {idx!r}")
        return _Item(cls, where, index=idx)
    p = raw["path"]
    if not isinstance(p, str) or not p:
        raise EpisodeSetError(f"{where}: 'path' must be a non-empty string, got {p!r}")
    return _Item(cls, where, path=folder / p)  # an absolute p replaces folder


def _parse_json(path: Path) -> tuple[dict[str, Any], list[_RawEpisode]]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise EpisodeSetError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise EpisodeSetError(f"{path}: malformed JSON at line {e.lineno} column {e.colno} "
                              f"(char {e.pos}): {e.msg}") from None
    if not isinstance(doc, dict) or "format" not in doc:
        raise EpisodeSetError(f"{path}: not a metabench episode set (expected a JSON object with "
                              f"\"format\": {FORMAT!r})")
    if doc["format"] != FORMAT:
        raise EpisodeSetError(f"{path}: unknown format {doc['format']!r} (expected {FORMAT!r})")
    version = doc.get("version")
    if not _is_int(version) or version != VERSION:
        raise EpisodeSetError(f"{path}: unsupported {FORMAT} version {version!r} (this metabench reads "
                              f"version {VERSION})")
    for key, default in (("dataset", ""), ("split", "test")):
        doc.setdefault(key, default)
        if not isinstance(doc[key], str) or (key == "split" and not doc[key]):
            raise EpisodeSetError(f"{path}: {key!r} must be a{' non-empty' if key == 'split' else ''} "
                                  f"string, got {doc[key]!r}")
    episodes = doc.get("episodes")
    if not isinstance(episodes, list) or not episodes:
        raise EpisodeSetError(f"{path}: 'episodes' must be a non-empty list")
    out = []
    for e, raw in enumerate(episodes):
        source = f"{path}, episode {e}"
        if not isinstance(raw, dict):
            raise EpisodeSetError(f"{source}: an episode must be an object with 'support' and 'query'")
        unknown = sorted(set(raw) - {"support", "query"})
        if unknown:
            raise EpisodeSetError(f"{source}: unknown key(s) {unknown} (an episode has 'support' and 'query')")
        parts = []
        for part in ("support", "query"):
            items = raw.get(part)
            if not isinstance(items, list):
                raise EpisodeSetError(f"{source}: {part!r} must be a list of items")
            if not items:
                raise EpisodeSetError(f"{source}: empty episode: its {part} has no images")
            parts.append([_parse_item(it, f"{source}, {part} item {i}", path.parent) for i, it in enumerate(items)])
        out.append(_RawEpisode(source, *parts))
    return doc, out


_INT = re.compile(r"-?[0-9]+")


def _visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def _sorted_names(paths: list[Path]) -> list[Path]:
    if all(_INT.fullmatch(p.name) for p in paths):
        return sorted(paths, key=lambda p: (int(p.name), p.name))
    return sorted(paths, key=lambda p: p.name)


def _is_episode_dir(d: Path) -> bool:
    return (d / "support").is_dir() and (d / "query").is_dir()


def _parse_folder_episode(ep: Path) -> _RawEpisode:
    source = str(ep)
    dirs = {part: [c for c in _visible(ep / part)] for part in ("support", "query")}
    names = [c.name for cs in dirs.values() for c in cs if c.is_dir()]
    as_int = bool(names) and all(_INT.fullmatch(n) for n in names)
    parts = []
    for part, entries in dirs.items():
        items: list[_Item] = []
        seen: dict[ClassId, str] = {}
        for c in _sorted_names(entries):
            if not c.is_dir():
                raise EpisodeSetError(f"{c}: a file directly in {part}/ (images go in {part}/<class>/)")
            cls: ClassId = int(c.name) if as_int else c.name
            if cls in seen:
                raise EpisodeSetError(f"{source}: {part} class folders {seen[cls]!r} and {c.name!r} are both "
                                      f"class {cls!r}")
            seen[cls] = c.name
            files = sorted(_visible(c), key=lambda p: p.name)
            for f in files:
                if f.is_dir() or f.suffix.lower() not in IMAGE_SUFFIXES:
                    what = "a folder" if f.is_dir() else "not an image file"
                    raise EpisodeSetError(f"{f}: {what} in class folder {c} (expected "
                                          f"{', '.join(IMAGE_SUFFIXES)} images)")
                items.append(_Item(cls, f"{source}: {part} image {f}", path=f))
            if not files:
                raise EpisodeSetError(f"{c}: empty class folder in episode {source}")
        if not items:
            raise EpisodeSetError(f"{source}: empty episode: {part}/ has no class folders with images")
        parts.append(items)
    return _RawEpisode(source, *parts)


def _parse_folder(root: Path) -> list[_RawEpisode]:
    if _is_episode_dir(root):
        return [_parse_folder_episode(root)]
    subs = [d for d in _visible(root) if d.is_dir()]
    if not subs:
        raise EpisodeSetError(f"{root}: no episodes (expected {root}/<episode>/support/ and .../query/, "
                              f"or support/ and query/ in {root} itself)")
    for d in subs:
        if not _is_episode_dir(d):
            missing = [p for p in ("support", "query") if not (d / p).is_dir()]
            raise EpisodeSetError(f"{d}: not an episode folder (it has no {' or '.join(p + '/' for p in missing)})")
    return [_parse_folder_episode(d) for d in _sorted_names(subs)]


def _parse(path: Path) -> tuple[str, dict[str, Any], list[_RawEpisode]]:
    if path.is_dir():
        return "folder", {"dataset": "", "split": "test"}, _parse_folder(path)
    if not path.exists():
        raise EpisodeSetError(f"{path}: no such episode set (neither a JSON file nor a folder)")
    doc, eps = _parse_json(path)
    return "json", doc, eps


# ------------------------------------------------------------------------------------------ loading


class _Shape:
    """The one ``[C, H, W]`` shape every image of a set must have, and where it was first seen."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] | None = None
        self.where = ""

    def check(self, shape: tuple[int, ...], where: str) -> None:
        if self.shape is None:
            self.shape, self.where = shape, where
        elif shape != self.shape:
            raise EpisodeSetError(f"{where}: image shape {shape} differs from {self.shape} of {self.where}; "
                                  f"all images of a set must share one [C, H, W] shape")


def _read_image(item: _Item, prepare: Prepare) -> torch.Tensor:
    from PIL import Image

    path = item.path
    assert path is not None
    if not path.is_file():
        raise EpisodeSetError(f"{item.where}: image file {path} not found")
    try:
        im = Image.open(path)
        im.load()
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, ... on bad files
        raise EpisodeSetError(f"{item.where}: cannot read image {path}: {type(e).__name__}: {e}") from None
    try:
        out = prepare(im)
    except PluginError as e:
        e.add_note(f"while preparing image {path} ({item.where})")
        raise
    except Exception as e:  # noqa: BLE001
        raise EpisodeSetError(f"{item.where}: prepare() failed on image {path}: {type(e).__name__}: {e}") from e
    finally:
        im.close()
    if not isinstance(out, torch.Tensor) or out.dtype != torch.uint8 or out.dim() != 3:
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise PluginError(f"prepare() must turn an image into a uint8 [C, H, W] tensor; for {path} it "
                          f"returned {got}")
    return out.cpu()


def _images(items: list[_Item], split: LabeledSplit | None, prepare: Prepare | None, shape: _Shape,
            split_name: str) -> torch.Tensor:
    out: list[torch.Tensor | None] = [None] * len(items)
    pos, idx = [], []
    for i, it in enumerate(items):
        if it.index is None:
            if prepare is None:
                raise EpisodeSetError(f"{it.where}: a path item ({it.path}) needs prepare= (the dataset's "
                                      f"function from a PIL image to uint8 [C, H, W])")
            img = _read_image(it, prepare)
            shape.check(tuple(img.shape), str(it.path))
            out[i] = img
            continue
        if split is None:
            raise EpisodeSetError(f"{it.where}: an index item needs split= (the dataset's {split_name!r} split)")
        size = split.images.shape[0]
        if it.index >= size:
            raise EpisodeSetError(f"{it.where}: index {it.index} is out of range of split {split_name!r} "
                                  f"(it has {size} images, 0..{size - 1})")
        pos.append(i)
        idx.append(it.index)
    if idx:
        assert split is not None
        shape.check(tuple(split.images.shape[1:]), f"split {split_name!r}")
        got = split.images[torch.tensor(idx, device=split.images.device)].cpu()
        for i, img in zip(pos, got):
            out[i] = img
    return torch.stack(out)  # type: ignore[arg-type]


def _sort_key(ids: list[ClassId], source: str) -> list[ClassId]:
    kinds = {type(c) for c in ids}
    if len(kinds) > 1:
        raise EpisodeSetError(f"{source}: class ids mix integers and strings ({sorted(map(repr, ids))}); "
                              f"use one kind per episode")
    return sorted(ids)  # type: ignore[type-var]


def _build(raw: _RawEpisode, split: LabeledSplit | None, prepare: Prepare | None, shape: _Shape,
           split_name: str) -> Episode:
    shots = Counter(it.cls for it in raw.support)
    classes = _sort_key(list(shots), raw.source)
    if len(set(shots.values())) > 1:
        counts = ", ".join(f"{c!r}: {shots[c]}" for c in classes)
        raise EpisodeSetError(f"{raw.source}: support classes have different numbers of shots ({counts}); "
                              f"every class needs the same K")
    label = {c: i for i, c in enumerate(classes)}
    for it in raw.query:
        if it.cls not in label:
            raise EpisodeSetError(f"{it.where}: query class {it.cls!r} is not in the support "
                                  f"(support classes: {classes})")
    sup = sorted(raw.support, key=lambda it: label[it.cls])  # stable: a class keeps its items' order
    qry = sorted(raw.query, key=lambda it: label[it.cls])
    per_class = Counter(it.cls for it in raw.query)
    q_counts = {per_class.get(c, 0) for c in classes}
    return Episode(
        support_x=_images(sup, split, prepare, shape, split_name),
        support_y=torch.tensor([label[it.cls] for it in sup], dtype=torch.int64),
        query_x=_images(qry, split, prepare, shape, split_name),
        query_y=torch.tensor([label[it.cls] for it in qry], dtype=torch.int64),
        ways=len(classes), shots=shots[classes[0]],
        queries=q_counts.pop() if len(q_counts) == 1 else None,
        classes=tuple(classes), source=raw.source,
    )


def inspect_episodes(path: str | Path) -> EpisodeSetInfo:
    """Read an episode set's layout and header (and check its structure) without loading any image, so a
    caller can pick the dataset split and ``prepare`` that :func:`load_episodes` will need."""
    path = Path(path)
    layout, doc, eps = _parse(path)
    items = [it for e in eps for it in (*e.support, *e.query)]
    return EpisodeSetInfo(path, layout, doc["dataset"], doc["split"], len(eps),
                          needs_split=any(it.index is not None for it in items),
                          needs_prepare=any(it.path is not None for it in items))


def load_episodes(path: str | Path, *, split: LabeledSplit | None = None,
                  prepare: Prepare | None = None) -> list[Episode]:
    """Load the episode set at ``path`` (a JSON file or a folder; layouts in the module docstring).

    ``split``: the dataset split that index items index (the one the set's ``"split"`` names);
    ``prepare``: the dataset's function from a PIL image to uint8 ``[C, H, W]``, for path items and
    folders. Raises :class:`EpisodeSetError` naming the culprit on any fault.
    """
    path = Path(path)
    _, doc, raws = _parse(path)
    shape = _Shape()
    return [_build(raw, split, prepare, shape, doc["split"]) for raw in raws]


# ------------------------------------------------------------------------------------ writing, batching


def write_index_episodes(path: str | Path, indices: torch.Tensor, shots: int, labels: torch.Tensor | None = None,
                         dataset: str = "", split: str = "test") -> None:
    """Write the index episodes ``indices`` ``[E, N, K+Q]`` (into the split ``split`` of ``dataset``; the
    first ``shots`` of each class are support) as a JSON episode set, atomically.

    Class ids are the true labels ``labels[indices]`` when ``labels`` (the split's labels ``[M]``) is given,
    else ``0..N-1`` along ``N``. With ``labels=None`` the set loads back to exactly
    :func:`~metabench.toolkit.episodes.batch_from_indices`' layout; with labels, loading relabels each
    episode's classes in sorted order of their true labels (the same images, the classes permuted).
    """
    if not isinstance(indices, torch.Tensor) or indices.dim() != 3 or indices.is_floating_point():
        raise ValueError("indices must be an integer tensor [E, N, K+Q]")
    e, n, m = indices.shape
    if e == 0 or n == 0 or not 1 <= shots < m:
        raise ValueError(f"indices {tuple(indices.shape)} with shots={shots}: need E, N >= 1 and "
                         f"1 <= shots < K+Q (a non-empty query)")
    if int(indices.min()) < 0:
        raise ValueError("indices must be non-negative")
    idx = indices.detach().cpu()
    if labels is not None:
        labels = labels.detach().cpu()
        if labels.dim() != 1 or int(idx.max()) >= labels.numel():
            raise ValueError(f"labels must be the split's labels [M] covering every index, got "
                             f"{tuple(labels.shape)} for indices up to {int(idx.max())}")
        cls = labels[idx]
        if not (cls == cls[:, :, :1]).all():
            bad = int((cls != cls[:, :, :1]).any(2).any(1).nonzero()[0])
            raise ValueError(f"episode {bad}: a class row of indices holds images of different labels")
        for t in range(e):
            if len(set(cls[t, :, 0].tolist())) != n:
                raise ValueError(f"episode {t}: two class rows have the same label")
        ids = cls[:, :, 0].tolist()
    else:
        ids = [list(range(n))] * e
    rows = idx.tolist()
    lines = []
    for t in range(e):
        sup = [{"class": ids[t][c], "index": i} for c in range(n) for i in rows[t][c][:shots]]
        qry = [{"class": ids[t][c], "index": i} for c in range(n) for i in rows[t][c][shots:]]
        lines.append(json.dumps({"support": sup, "query": qry}))
    header = {"format": FORMAT, "version": VERSION, **({"dataset": dataset} if dataset else {}), "split": split}
    text = json.dumps(header)[:-1] + ',\n "episodes": [\n  ' + ",\n  ".join(lines) + "\n ]}\n"
    write_atomic(Path(path), lambda f: f.write(text.encode("utf-8")))


def stack_episodes(episodes: Sequence[Episode], *, batch: int | None = None,
                   device: torch.device | str | None = None,
                   cap: Callable[[int, int, int], int] | None = None) -> Iterator[tuple[list[int], EpisodeBatch]]:
    """Group ``episodes`` of equal ``(N, K, query size, image shape)`` into float meta-batches of at most
    ``batch`` tasks (all of a group when ``None``) on ``device``, yielding ``(positions, batch)``:
    ``positions`` are the batch's tasks' indices in ``episodes``. Groups come in order of first appearance,
    so ``scores[positions] = per_task_scores`` restores the original order. ``cap(tasks, images per task,
    values per image)``, if given, lowers the tasks per batch of each group (e.g. to bound memory)."""
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    groups: dict[tuple, list[int]] = {}
    for i, ep in enumerate(episodes):
        groups.setdefault((ep.ways, ep.shots, ep.query_x.shape[0], ep.image_shape), []).append(i)
    for positions in groups.values():
        step = batch or len(positions)
        if cap is not None:
            first = episodes[positions[0]]
            step = cap(step, first.support_x.shape[0] + first.query_x.shape[0], first.support_x[0].numel())
        for s in range(0, len(positions), step):
            pos = positions[s:s + step]
            eps = [episodes[i] for i in pos]

            def stack(key: str) -> torch.Tensor:
                t = torch.stack([getattr(ep, key) for ep in eps])
                return t if device is None else t.to(device)

            yield pos, EpisodeBatch(support_x=to_float(stack("support_x")), support_y=stack("support_y"),
                                    query_x=to_float(stack("query_x")), query_y=stack("query_y"),
                                    ways=eps[0].ways)
