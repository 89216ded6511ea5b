"""Omniglot's ``split = "lake"`` (Lake et al. 2015: background alphabets train, evaluation ones test) and
``Omniglot.prepare_image``, on the real data (skipped without it) and on a tiny fake omniglot folder."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from metabench import DataContext, PluginError
from metabench_plugins.datasets import omniglot
from metabench_plugins.datasets.omniglot import Omniglot

LAKE = Omniglot.resolve_options({"split": "lake"})
FAKE_SETS = {"images_background": ("Alpha", "Gamma"), "images_evaluation": ("Beta",)}


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            st = os.stat(os.path.join(dirpath, n))
            out[os.path.join(dirpath, n)] = (st.st_size, st.st_mtime_ns)
    return out


def _png(src: Path, set_name: str, rel: str) -> bytes:
    """The bytes of ``Alphabet/characterNN/file.png`` in a set's folder or zip."""
    if src.is_dir():
        return (src / rel).read_bytes()
    with zipfile.ZipFile(src) as zf:
        return zf.read(f"{set_name}/{rel}")


def _first_png(src: Path, set_name: str, char: str) -> str:
    """The first (sorted) drawing of ``char``: drawing 0 of its class."""
    return next(r for r in omniglot._list_pngs(src, set_name) if r.startswith(f"{char}/"))


def _alphabets(chars: list[str]) -> set[str]:
    return {c.split("/")[0] for c in chars}


# ---------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def lake(data_root, cache_dir):
    before = _snapshot(data_root)
    s = Omniglot().load(DataContext(data_root, cache_dir, LAKE))
    assert _snapshot(data_root) == before  # nothing written under the data root
    return s


def test_lake_counts_and_alphabets(lake, data_root):
    sources = omniglot.find_sources(data_root)
    bg, ev = (omniglot._characters(sources[s], s) for s in omniglot.SETS)
    assert len(bg) == 964 and len(ev) == 659
    assert len(_alphabets(bg)) == 30 and len(_alphabets(ev)) == 20
    assert not _alphabets(bg) & _alphabets(ev)  # disjoint by alphabet, hence by character

    assert lake.protocol == "lake-by-alphabet" and sorted(lake.splits) == ["test", "train"]
    assert lake.images.shape == (1623 * 20, 1, 28, 28) and lake.images.dtype == torch.uint8
    train, test = lake.splits["train"], lake.splits["test"]
    assert len(train) == 964 * 20 and len(test) == 659 * 20
    assert torch.equal(torch.cat([train, test]), torch.arange(1623 * 20))
    assert torch.equal(lake.labels[train].bincount(), torch.full((964,), 20))
    assert torch.equal(lake.labels[test].unique(), torch.arange(964, 1623))
    assert (lake.labels[test].bincount()[964:] == 20).all()


@pytest.mark.parametrize("which", [0, 1, 500, 963, 964, 1300, 1622])
def test_lake_classes_are_the_right_characters(lake, data_root, which):
    """Class c is background character c (sorted), then evaluation character c - 964, unrotated."""
    sources = omniglot.find_sources(data_root)
    chars = {s: omniglot._characters(sources[s], s) for s in omniglot.SETS}
    s, i = ("images_background", which) if which < 964 else ("images_evaluation", which - 964)
    rel = _first_png(sources[s], s, chars[s][i])
    with Image.open(io.BytesIO(_png(sources[s], s, rel))) as im:
        got = Omniglot().prepare_image(im, LAKE)
    assert torch.equal(got, lake.images[lake.labels == which][0])


def test_lake_reuses_the_decoded_base(lake, data_root, cache_dir, monkeypatch):
    """Vinyals after lake (same cache) decodes nothing; its unrotated classes are lake's images."""
    monkeypatch.setattr(omniglot, "_build_base", lambda sources: pytest.fail("decoded twice"))
    vin = Omniglot().load(DataContext(data_root, cache_dir, Omniglot.resolve_options({})))
    sources = omniglot.find_sources(data_root)
    names = [c for s in omniglot.SETS for c in omniglot._characters(sources[s], s)]
    lines = [ln for part in ("train", "val", "test")
             for ln in (data_root / f"splits/omniglot/vinyals/{part}.txt").read_text().split()]
    vin_class = {ln.rsplit("/", 1)[0]: i for i, ln in enumerate(lines) if ln.endswith("/rot000")}
    order = torch.tensor([vin_class[n] for n in names])
    vin_images = vin.images.view(-1, 20, 1, 28, 28)
    assert torch.equal(vin_images[order].view(-1, 1, 28, 28), lake.images)


# ---------------------------------------------------------------------------------------- fake data


def _fake_omniglot(root: Path, as_zip: bool) -> dict[str, bytes]:
    """Two background alphabets and one evaluation alphabet, two characters of 20 drawings each."""
    rng = np.random.default_rng(1)
    files = {}
    for s, alphabets in FAKE_SETS.items():
        for a in alphabets:
            for c in (1, 2):
                for d in range(1, 21):
                    im = Image.new("1", (105, 105), 1)
                    pts = [tuple(int(v) for v in rng.integers(5, 100, 2)) for _ in range(3)]
                    ImageDraw.Draw(im).line(pts, fill=0, width=3)
                    buf = io.BytesIO()
                    im.save(buf, format="PNG")
                    files[f"{s}/{a}/character{c:02d}/{ord(a[0]):04d}_{d:02d}.png"] = buf.getvalue()
    base = root / "omniglot-py"
    base.mkdir(parents=True)
    for name, data in files.items():
        if as_zip:
            with zipfile.ZipFile(base / f"{name.split('/')[0]}.zip", "a") as zf:
                zf.writestr(name, data)
        else:
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            (base / name).write_bytes(data)
    split = root / "splits/omniglot/vinyals"
    split.mkdir(parents=True)
    (split / "train.txt").write_text("Alpha/character01/rot000\nGamma/character02/rot090\n")
    (split / "val.txt").write_text("Alpha/character02/rot000\n")
    (split / "test.txt").write_text("Beta/character01/rot000\n")
    return files


@pytest.mark.parametrize("as_zip", [False, True])
def test_lake_on_fake_omniglot(tmp_path, as_zip, monkeypatch):
    files = _fake_omniglot(tmp_path / "data", as_zip)
    ctx = DataContext(tmp_path / "data", tmp_path / "cache", LAKE)
    s = Omniglot().load(ctx)
    assert s.protocol == "lake-by-alphabet" and sorted(s.splits) == ["test", "train"]
    assert s.images.shape == (120, 1, 28, 28)
    assert torch.equal(s.splits["train"], torch.arange(80))
    assert torch.equal(s.splits["test"], torch.arange(80, 120))
    assert torch.equal(s.labels, torch.arange(6).repeat_interleave(20))
    # class order: Alpha/01, Alpha/02, Gamma/01, Gamma/02 (background), Beta/01, Beta/02 (evaluation)
    for cls, name in [(0, "images_background/Alpha/character01/0065_01.png"),
                      (3, "images_background/Gamma/character02/0071_20.png"),
                      (5, "images_evaluation/Beta/character02/0066_07.png")]:
        drawing = int(name[-6:-4]) - 1
        with Image.open(io.BytesIO(files[name])) as im:
            assert torch.equal(Omniglot().prepare_image(im, LAKE), s.images[s.labels == cls][drawing])

    # the vinyals split reuses the cached base: no second decode, one cache entry
    monkeypatch.setattr(omniglot, "_build_base", lambda sources: pytest.fail("decoded twice"))
    vin = Omniglot().load(DataContext(tmp_path / "data", tmp_path / "cache", {}))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    assert torch.equal(vin.images[:20], s.images[:20])  # Alpha/character01/rot000
    assert torch.equal(vin.images[40:60], s.images[20:40])  # val: Alpha/character02/rot000
    assert torch.equal(vin.images[20:40], torch.rot90(s.images[60:80], 1, dims=(-2, -1)))


def test_lake_rejects_an_alphabet_in_both_sets(tmp_path):
    _fake_omniglot(tmp_path, as_zip=False)
    bg, ev = (tmp_path / "omniglot-py" / s for s in omniglot.SETS)
    (bg / "Beta").mkdir()
    (ev / "Beta/character01").rename(bg / "Beta/character01")
    with pytest.raises(PluginError, match=r"\['Beta'\] are in both"):
        Omniglot().load(DataContext(tmp_path, tmp_path / "cache", LAKE))


def test_default_prepare_image_raises():
    from metabench import Dataset

    class NoPrep(Dataset):
        name = "noprep"

        def load(self, ctx):
            raise NotImplementedError

    with pytest.raises(PluginError, match="'noprep'.*cannot prepare external images"):
        NoPrep().prepare_image(Image.new("L", (28, 28)), {})
