"""Omniglot, 28x28, with two class splits: Vinyals et al.'s (default) and Lake et al.'s by alphabet.

Source: Lake, Salakhutdinov & Tenenbaum (2015), "Human-level concept learning through probabilistic
program induction", Science 350(6266) -- github.com/brendenlake/omniglot.

Option ``split``:

* ``"vinyals"`` (default, or any folder under ``splits/omniglot/``): Vinyals et al. (2016), "Matching
  Networks for One Shot Learning", NeurIPS, as distributed with Snell et al.'s prototypical networks
  (``splits/omniglot/vinyals/{train,val,test}.txt``, one ``Alphabet/characterNN/rotDDD`` class per line):
  1623 characters x 4 rotations (90/180/270 degree turns are extra classes), split by class.
* ``"lake"``: the one-shot benchmark split of Lake et al. (2015): ``train`` = the 964 characters of the 30
  background alphabets (``images_background``), ``test`` = the 659 characters of the 20 evaluation
  alphabets (``images_evaluation``), so no test alphabet (hence no test character) is seen in training.
  No rotations (Lake's benchmark has none) and no ``val`` split: all 30 background alphabets are for
  training as in Lake et al., and an empty split would be meaningless (the runner uses only ``train``
  and ``test``). Needs no split files; takes precedence over a ``splits/omniglot/lake/`` folder.

Reads torchvision's ``omniglot-py/`` folder: extracted ``images_background/`` and ``images_evaluation/``
folders, or their zips (read in memory; nothing is ever written under the data root). The 1623 x 20 base
drawings are decoded once by :func:`prepare` (105x105 -> 28x28 Lanczos, inverted so strokes are bright)
and cached; both splits are assembled from the cached base (rotations with ``torch.rot90``) on every load.
:meth:`Omniglot.prepare_image` runs the same :func:`prepare` on an external 105x105 drawing.
"""
from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metabench import DataContext, Dataset, DatasetNotFoundError, ImageSet, PluginError, hookimpl
from metabench.toolkit.datacache import cached_tensors, cache_key

SETS = ("images_background", "images_evaluation")
SPLITS = ("train", "val", "test")
LAKE = "lake"  # the split value for Lake et al.'s background/evaluation split
DRAWINGS = 20
SIZE = 28
DECODER_VERSION = 1
_LINE_RE = re.compile(r"^([^/]+/character\d+)/rot(000|090|180|270)$")


def _how_to(root: Path) -> str:
    return (f"set --data-root or METABENCH_DATA to a folder containing omniglot-py/ (with "
            f"images_background/ and images_evaluation/, extracted or as torchvision's zips) and "
            f"splits/omniglot/<split>/{{train,val,test}}.txt (current data root: {root})")


def find_sources(root: Path) -> dict[str, Path]:
    """For each image set, its extracted folder or its zip under ``root/omniglot-py``.

    Raises :class:`DatasetNotFoundError` listing every path looked for when a set is missing.
    """
    base = root / "omniglot-py"
    found, looked = {}, []
    for s in SETS:
        cands = [base / s, base / f"{s}.zip", base / f"{s}_rebuilt.zip"]
        hit = next((c for c in cands if (c.is_dir() if c.suffix != ".zip" else c.is_file())), None)
        if hit is None:
            looked += cands
        else:
            found[s] = hit
    if looked:
        raise DatasetNotFoundError("omniglot: images not found; looked for "
                                   + ", ".join(str(p) for p in looked) + ". " + _how_to(root))
    return found


def _list_pngs(src: Path, set_name: str) -> list[str]:
    """Sorted ``Alphabet/characterNN/file.png`` paths of one set (a folder or a zip)."""
    if src.is_dir():
        return sorted(p.relative_to(src).as_posix() for p in src.glob("*/*/*.png"))
    with zipfile.ZipFile(src) as zf:
        prefix = f"{set_name}/"
        return sorted(n[len(prefix):] for n in zf.namelist()
                      if n.startswith(prefix) and n.endswith(".png") and n.count("/") == 3)


def _characters(src: Path, set_name: str) -> list[str]:
    """Sorted ``Alphabet/characterNN`` folders of one set (a folder or a zip), without listing drawings."""
    if src.is_dir():
        return sorted(f"{a.name}/{c.name}" for a in os.scandir(src) if a.is_dir()
                      for c in os.scandir(a.path) if c.is_dir())
    with zipfile.ZipFile(src) as zf:
        return sorted({n.split("/", 1)[1].rsplit("/", 1)[0] for n in zf.namelist()
                       if n.startswith(f"{set_name}/") and n.endswith(".png") and n.count("/") == 3})


def lake_split(sources: dict[str, Path]) -> dict[str, list[tuple[str, int]]]:
    """Lake et al.'s split: ``train`` = background characters, ``test`` = evaluation ones, unrotated.

    Raises :class:`PluginError` if an alphabet name occurs in both sets (the split is by alphabet).
    """
    train, test = (_characters(sources[s], s) for s in SETS)
    shared = {c.split("/")[0] for c in train} & {c.split("/")[0] for c in test}
    if shared:
        raise PluginError(f"omniglot: alphabet(s) {sorted(shared)[:5]} are in both {SETS[0]} and "
                          f"{SETS[1]}; the lake split must be disjoint by alphabet")
    return {"train": [(c, 0) for c in train], "test": [(c, 0) for c in test]}


def _source_files(src: Path) -> list[Path]:
    """The paths whose size and mtime fingerprint a source: a zip itself, or a folder and its subfolders.

    A folder's mtime changes whenever an entry is added, removed or renamed, so statting the ~1700
    alphabet and character folders catches changed drawings at a fraction of the cost of 32460 files.
    """
    if not src.is_dir():
        return [src]
    out = [src]
    for alphabet in sorted(e.path for e in os.scandir(src) if e.is_dir()):
        out.append(Path(alphabet))
        out += sorted(Path(e.path) for e in os.scandir(alphabet) if e.is_dir())
    return out


def prepare(im: Image.Image) -> np.ndarray:
    """One 105x105 drawing (dark strokes on white) -> 28x28 uint8, strokes bright on a 0 background."""
    small = im.convert("L").resize((SIZE, SIZE), Image.LANCZOS)
    return 255 - np.asarray(small, dtype=np.uint8)


def _decode(data: bytes) -> np.ndarray:
    """:func:`prepare` of one PNG file's bytes."""
    with Image.open(io.BytesIO(data)) as im:
        return prepare(im)


def _build_base(sources: dict[str, Path]) -> dict[str, torch.Tensor]:
    """Decode every drawing into ``images`` [chars, 20, 28, 28] and ``names`` (utf-8 of 'A/cNN' lines)."""
    counts: dict[str, int] = {}  # 'Alphabet/characterNN' -> drawings, in decoding order
    images: list[np.ndarray] = []
    for s in SETS:
        src = sources[s]
        rels = _list_pngs(src, s)
        zf = None if src.is_dir() else zipfile.ZipFile(src)
        try:
            for rel in rels:
                data = (src / rel).read_bytes() if zf is None else zf.read(f"{s}/{rel}")
                images.append(_decode(data))
                char = rel.rsplit("/", 1)[0]
                counts[char] = counts.get(char, 0) + 1
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            raise PluginError(f"omniglot: cannot decode {src}: {exc}") from exc
        finally:
            if zf is not None:
                zf.close()
    odd = [f"{c} ({n})" for c, n in counts.items() if n != DRAWINGS]
    if odd or not counts:
        where = " and ".join(str(p) for p in sources.values())
        raise PluginError(f"omniglot: expected {DRAWINGS} drawings per character in {where}; found "
                          f"otherwise for: {', '.join(odd[:5]) or 'no characters at all'}")
    names = list(counts)
    stacked = torch.from_numpy(np.stack(images)).view(len(names), DRAWINGS, SIZE, SIZE)
    blob = torch.frombuffer(bytearray("\n".join(names).encode()), dtype=torch.uint8)
    return {"images": stacked, "names": blob}


def read_split(root: Path, split: str) -> dict[str, list[tuple[str, int]]]:
    """``{train,val,test}`` -> list of (``Alphabet/characterNN``, quarter turns) classes, in file order."""
    folder = root / "splits" / "omniglot" / split
    out = {}
    for part in SPLITS:
        path = folder / f"{part}.txt"
        if not path.is_file():
            raise DatasetNotFoundError(f"omniglot: split file {path} not found. " + _how_to(root))
        classes = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            m = _LINE_RE.match(line)
            if m is None:
                raise PluginError(f"omniglot: {path}:{n}: expected 'Alphabet/characterNN/rotDDD', "
                                  f"got {line!r}")
            classes.append((m.group(1), int(m.group(2)) // 90))
        out[part] = classes
    return out


class Omniglot(Dataset):
    """Omniglot, 28x28: Vinyals' class split with rotations (default), or Lake's split by alphabet."""

    name = "omniglot"
    description = ("Omniglot handwritten characters, 28x28; split=vinyals: 4 rotations per character, "
                   "Vinyals class split; split=lake: background/evaluation alphabets, no rotations")
    paper = ("Lake, Salakhutdinov & Tenenbaum (2015), Human-level concept learning through probabilistic "
             "program induction, Science 350(6266) (split=lake: its background/evaluation split); "
             "split=vinyals: Vinyals et al. (2016), Matching Networks for One Shot Learning, NeurIPS")
    defaults = {"split": "vinyals"}
    augmentation = "strokes"  # UMTRA's Omniglot augmentation

    def load(self, ctx: DataContext) -> ImageSet:
        """Decode (once, then from ``ctx.cache_dir``) and assemble the (rotated) classes of the split."""
        split = ctx.options.get("split", self.defaults["split"])
        if not isinstance(split, str) or not split or "/" in split or os.sep in split or split[0] == ".":
            raise PluginError(f"omniglot: option split must be {LAKE!r} or a folder name under "
                              f"splits/omniglot/, got {split!r}")
        root = Path(ctx.data_root)
        sources = find_sources(root)
        classes = lake_split(sources) if split == LAKE else read_split(root, split)

        files = [f for src in sources.values() for f in _source_files(src)]
        key = cache_key("omniglot-base", DECODER_VERSION, files, root=root, size=SIZE)
        base = cached_tensors(Path(ctx.cache_dir), key, lambda: _build_base(sources))
        index = {n: i for i, n in enumerate(bytes(base["names"].numpy()).decode().split("\n"))}

        chars, turns = [], []
        for part in classes:
            for char, k in classes[part]:
                if char not in index:
                    raise DatasetNotFoundError(
                        f"omniglot: split {split!r} ({part}) names {char}, which is in neither "
                        f"{sources['images_background']} nor {sources['images_evaluation']}")
                chars.append(index[char])
                turns.append(k)
        chars_t, turns_t = torch.tensor(chars), torch.tensor(turns)

        # Class c = base character chars[c] turned k = turns[c] quarter turns counter-clockwise (as PIL).
        out = torch.empty(len(chars), DRAWINGS, SIZE, SIZE, dtype=torch.uint8)
        for k in range(4):
            sel = (turns_t == k).nonzero().squeeze(1)
            picked = base["images"].index_select(0, chars_t[sel])
            out.index_copy_(0, sel, torch.rot90(picked, k, dims=(-2, -1)) if k else picked)

        labels = torch.arange(len(chars)).repeat_interleave(DRAWINGS)
        splits, start = {}, 0
        for part in classes:
            n = len(classes[part]) * DRAWINGS
            splits[part] = torch.arange(start, start + n)
            start += n
        images = out.view(-1, 1, SIZE, SIZE)
        protocol = "lake-by-alphabet" if split == LAKE else f"{split}-by-class"
        return ImageSet(self.name, images, labels, splits, protocol=protocol)

    def prepare_image(self, image: Image.Image, options: dict) -> torch.Tensor:
        """A 105x105 drawing (black strokes on white, as in the source PNGs) -> uint8 ``[1, 28, 28]``,
        by the same :func:`prepare` as the dataset's own drawings (no rotation: that is per class)."""
        return torch.from_numpy(prepare(image).copy()).unsqueeze(0)


@hookimpl
def metabench_datasets():
    """The Omniglot dataset plugin."""
    return [Omniglot]
