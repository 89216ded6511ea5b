"""The built-in dataset plugins (omniglot, mnist, digits) and the tensor cache they share."""
from __future__ import annotations

import gzip
import io
import os
import shutil
import time
import warnings
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from metabench import DataContext, DatasetNotFoundError, ImageSet, PluginError
from metabench.toolkit.datacache import cache_key, cached_tensors
from metabench_plugins.datasets import digits, mnist, omniglot
from metabench_plugins.datasets.digits import Digits
from metabench_plugins.datasets.mnist import MNIST
from metabench_plugins.datasets.omniglot import Omniglot

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {str(root): (0, root.stat().st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            st = os.stat(os.path.join(dirpath, n))
            out[os.path.join(dirpath, n)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def root_before(data_root):
    """A listing (size, mtime) of the data root taken before any dataset in this module is loaded."""
    return _snapshot(data_root)


@pytest.fixture(scope="module")
def omniglot_loads(root_before, data_root, cache_dir):
    """Two loads of Omniglot (the first may decode, the second must hit the cache) and their times."""
    ctx = DataContext(data_root, cache_dir, Omniglot.resolve_options({}))
    times, sets = [], []
    for _ in range(2):
        t = time.perf_counter()
        sets.append(Omniglot().load(ctx))
        times.append(time.perf_counter() - t)
    return sets, times


@pytest.fixture(scope="module")
def omni(omniglot_loads) -> ImageSet:
    return omniglot_loads[0][1]


@pytest.fixture(scope="module")
def mnist_set(root_before, data_root, cache_dir) -> ImageSet:
    return MNIST().load(DataContext(data_root, cache_dir))


def _check_disjoint_cover(s: ImageSet, names):
    assert sorted(s.splits) == sorted(names)
    idx = torch.cat([s.splits[n] for n in names])
    assert idx.dtype == torch.int64
    assert len(idx) == len(s.images) and torch.equal(idx.sort().values, torch.arange(len(s.images)))


def _class_of(lines: list[str], line: str) -> int:
    return lines.index(line)


# ------------------------------------------------------------------------------------------ plugins


@pytest.mark.parametrize("module,cls", [(omniglot, Omniglot), (mnist, MNIST), (digits, Digits)])
def test_plugin_surface(module, cls):
    assert module.metabench_datasets() == [cls]
    assert cls.name and cls.description and "\n" not in cls.description and cls.paper
    assert isinstance(cls.defaults, dict)
    eps = {ep.name: ep.value for ep in entry_points(group="metabench")}
    assert eps.get(cls.name) == module.__name__


# ----------------------------------------------------------------------------------------- omniglot


def test_omniglot_shapes_and_splits(omni, data_root):
    assert omni.name == "omniglot" and omni.protocol == "vinyals-by-class"
    assert omni.images.shape == (129840, 1, 28, 28) and omni.images.dtype == torch.uint8
    assert omni.labels.shape == (129840,) and omni.labels.dtype == torch.int64
    assert torch.equal(omni.labels.bincount(), torch.full((6492,), 20))
    _check_disjoint_cover(omni, ["train", "val", "test"])
    sizes = {k: len(v) for k, v in omni.splits.items()}
    assert sizes == {"train": 82240, "val": 13760, "test": 33840}
    classes = {k: set(omni.labels[v].tolist()) for k, v in omni.splits.items()}
    assert [len(classes[k]) for k in ("train", "val", "test")] == [4112, 688, 1692]
    assert not (classes["train"] & classes["val"] or classes["train"] & classes["test"]
                or classes["val"] & classes["test"])
    # classes numbered over train, then val, then test lines
    assert min(classes["val"]) == 4112 and min(classes["test"]) == 4800


def test_omniglot_foreground_bright(omni):
    x = omni.images
    assert x.float().mean() < 40                       # mostly dark
    assert (x == 0).float().mean() > 0.6               # background exactly 0 dominates
    assert (x[:, :, 0, :] == 0).float().mean() > 0.95  # borders are background
    assert int(x.max()) > 200                          # strokes are bright


def test_omniglot_rotations(omni, data_root):
    lines = (data_root / "splits/omniglot/vinyals/train.txt").read_text().split()
    char = lines[0].rsplit("/", 1)[0]
    upright = omni.images[omni.labels == _class_of(lines, f"{char}/rot000")]
    for k in (1, 2, 3):
        turned = omni.images[omni.labels == _class_of(lines, f"{char}/rot{90 * k:03d}")]
        assert torch.equal(turned, torch.rot90(upright, k, dims=(-2, -1)))


def _first_drawing(src: Path, set_name: str, alphabet: str, character: str) -> bytes | None:
    """Bytes of the first png of a character in an extracted ``images_*`` folder or its zip, if there."""
    if src.is_dir():
        pngs = sorted((src / alphabet / character).glob("*.png"))
        return pngs[0].read_bytes() if pngs else None
    with zipfile.ZipFile(src) as zf:
        names = sorted(n for n in zf.namelist()
                       if n.startswith(f"{set_name}/{alphabet}/{character}/") and n.endswith(".png"))
        return zf.read(names[0]) if names else None


def test_omniglot_matches_pil_pipeline(omni, data_root):
    """Drawing 1 of the first rot090 train class, decoded independently: resize, invert, PIL rotate."""
    lines = (data_root / "splits/omniglot/vinyals/train.txt").read_text().split()
    line = next(ln for ln in lines if ln.endswith("rot090"))
    alphabet, character, _ = line.split("/")
    sources = omniglot.find_sources(data_root)
    found = [_first_drawing(src, s, alphabet, character) for s, src in sources.items()]
    (png,) = [b for b in found if b is not None]
    im = Image.open(io.BytesIO(png)).convert("L").resize((28, 28), Image.LANCZOS)
    want = np.asarray(Image.fromarray(255 - np.asarray(im)).rotate(90))
    got = omni.images[omni.labels == _class_of(lines, line)][0, 0]
    assert torch.equal(got, torch.from_numpy(want.copy()))


def test_omniglot_prepare_image_matches_cached(omni, data_root):
    """A source PNG (first drawing of each split's first unrotated class) through prepare_image equals the
    decoded, cached drawing."""
    sources = omniglot.find_sources(data_root)
    lines = [ln for part in ("train", "val", "test")
             for ln in (data_root / f"splits/omniglot/vinyals/{part}.txt").read_text().split()]
    for part in ("train", "val", "test"):
        first = (data_root / f"splits/omniglot/vinyals/{part}.txt").read_text().split()
        line = next(ln for ln in first if ln.endswith("rot000"))
        alphabet, character, _ = line.split("/")
        (png,) = [b for b in (_first_drawing(src, s, alphabet, character) for s, src in sources.items())
                  if b is not None]
        with Image.open(io.BytesIO(png)) as im:
            got = Omniglot().prepare_image(im, Omniglot.resolve_options({}))
        assert got.dtype == torch.uint8 and got.shape == (1, 28, 28)
        assert torch.equal(got, omni.images[omni.labels == _class_of(lines, line)][0])


def _png_roundtrip(image: torch.Tensor) -> Image.Image:
    """uint8 ``[1, H, W]`` -> a mode-L PNG file's bytes -> the opened PIL image."""
    buf = io.BytesIO()
    Image.fromarray(image[0].numpy()).save(buf, format="PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


def test_omniglot_cached_load_fast_and_equal(omniglot_loads):
    (first, second), (t_first, t_second) = omniglot_loads
    print(f"omniglot: first load {t_first:.2f}s, cached load {t_second:.3f}s")
    assert t_second < 1.0
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert all(torch.equal(first.splits[k], second.splits[k]) for k in first.splits)


def test_omniglot_missing_data_root(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        Omniglot().load(DataContext(tmp_path / "nowhere", tmp_path / "cache"))
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "omniglot-py" / "images_background") in msg
    assert "METABENCH_DATA" in msg and "--data-root" in msg
    assert not (tmp_path / "cache").exists()


def test_omniglot_missing_split_files(tmp_path, data_root):
    (tmp_path / "omniglot-py").symlink_to(data_root / "omniglot-py")
    with pytest.raises(DatasetNotFoundError, match="splits/omniglot/vinyals/train.txt"):
        Omniglot().load(DataContext(tmp_path, tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError, match="splits/omniglot/nosuch/train.txt"):
        Omniglot().load(DataContext(tmp_path, tmp_path / "cache", {"split": "nosuch"}))
    with pytest.raises(PluginError, match="split"):
        Omniglot().load(DataContext(tmp_path, tmp_path / "cache", {"split": "../x"}))


def _fake_omniglot(root: Path, as_zip: bool) -> None:
    """A tiny Omniglot: one alphabet per set, two characters of 20 random-stroke drawings each."""
    rng = np.random.default_rng(0)
    files = {}
    for s, alphabet in (("images_background", "Alpha"), ("images_evaluation", "Beta")):
        for c in (1, 2):
            for d in range(1, 21):
                im = Image.new("1", (105, 105), 1)
                ImageDraw.Draw(im).line([tuple(int(v) for v in rng.integers(5, 100, 2)) for _ in range(3)],
                                        fill=0, width=3)
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                files[f"{s}/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png"] = buf.getvalue()
    base = root / "omniglot-py"
    base.mkdir(parents=True)
    if as_zip:
        for s in ("images_background", "images_evaluation"):
            with zipfile.ZipFile(base / f"{s}_rebuilt.zip", "w") as zf:
                for name, data in files.items():
                    if name.startswith(s):
                        zf.writestr(name, data)
    else:
        for name, data in files.items():
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            (base / name).write_bytes(data)
    split = root / "splits/omniglot/vinyals"
    split.mkdir(parents=True)
    (split / "train.txt").write_text("Alpha/character01/rot000\nBeta/character02/rot090\n")
    (split / "val.txt").write_text("Alpha/character02/rot180\n")
    (split / "test.txt").write_text("Beta/character01/rot270\n\n")


def test_omniglot_folder_and_zip_layouts_agree(tmp_path):
    sets = []
    for as_zip in (False, True):
        root = tmp_path / ("zip" if as_zip else "dir")
        _fake_omniglot(root, as_zip)
        sets.append(Omniglot().load(DataContext(root, tmp_path / "cache")))
    a, b = sets
    assert a.images.shape == (80, 1, 28, 28) and len(a.splits["train"]) == 40
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.sum() > 0
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # different sources, different keys
    # a removed drawing changes the fingerprint, and the rebuild reports the short character
    (tmp_path / "dir/omniglot-py/images_background/Alpha/character02/0002_07.png").unlink()
    with pytest.raises(PluginError, match=r"Alpha/character02 \(19\)"):
        Omniglot().load(DataContext(tmp_path / "dir", tmp_path / "cache"))


# -------------------------------------------------------------------------------------------- mnist


def test_mnist_shapes_and_splits(mnist_set):
    s = mnist_set
    assert s.protocol == "cactus-by-image"
    assert s.images.shape == (70000, 1, 28, 28) and s.images.dtype == torch.uint8
    assert s.labels.dtype == torch.int64
    _check_disjoint_cover(s, ["train", "test"])
    assert len(s.splits["train"]) == 60000 and len(s.splits["test"]) == 10000
    assert s.labels[s.splits["train"]].bincount().tolist() == MNIST_TRAIN_COUNTS
    assert s.labels[s.splits["test"]].bincount().tolist() == MNIST_TEST_COUNTS
    x = s.images
    assert x.float().mean() < 50 and (x == 0).float().mean() > 0.7 and int(x.max()) == 255


def test_mnist_cached_and_decompressed_agree(mnist_set, data_root, tmp_path):
    """Same tensors from the cache, and from decompressed idx files next to ``.gz`` ones."""
    again = MNIST().load(DataContext(data_root, tmp_path / "c1"))
    assert torch.equal(again.images, mnist_set.images) and torch.equal(again.labels, mnist_set.labels)
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / stem).write_bytes(gzip.decompress((data_root / "MNIST/raw" / f"{stem}.gz").read_bytes()))
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / f"{stem}.gz").symlink_to(data_root / "MNIST/raw" / f"{stem}.gz")
    mixed = MNIST().load(DataContext(tmp_path / "root", tmp_path / "c2"))
    assert torch.equal(mixed.images, mnist_set.images) and torch.equal(mixed.labels, mnist_set.labels)


def test_mnist_missing_data_root(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        MNIST().load(DataContext(tmp_path, tmp_path / "cache"))
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert "METABENCH_DATA" in msg


def test_mnist_corrupt_cache_is_rebuilt(mnist_set, data_root, tmp_path):
    ctx = DataContext(data_root, tmp_path)
    MNIST().load(ctx)
    (entry,) = tmp_path.glob("mnist-*.pt")
    entry.write_bytes(entry.read_bytes()[:1000])  # truncated
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        rebuilt = MNIST().load(ctx)
    assert torch.equal(rebuilt.images, mnist_set.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MNIST().load(ctx)  # the rebuilt entry is valid again


def test_mnist_prepare_image_roundtrips(mnist_set):
    """PNGs written from MNIST images (train and test) come back bit-exactly; another size is refused."""
    idx = torch.cat([torch.arange(0, 60000, 997), torch.arange(60000, 70000, 331), torch.tensor([69999])])
    for i in idx.tolist():
        assert torch.equal(MNIST().prepare_image(_png_roundtrip(mnist_set.images[i]), {}), mnist_set.images[i])
    with pytest.raises(PluginError, match="28x28"):
        MNIST().prepare_image(Image.new("L", (32, 28)), {})


def test_mnist_prepare_image_without_data():
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 28, 28), dtype=np.uint8))
    got = MNIST().prepare_image(_png_roundtrip(x), {})
    assert got.dtype == torch.uint8 and torch.equal(got, x)


# ------------------------------------------------------------------------------------------- digits


def test_digits_without_data_root(tmp_path):
    ctx = DataContext(tmp_path / "no-such-root", tmp_path / "no-cache")
    s = Digits().load(ctx)
    assert s.images.shape == (1797, 1, 8, 8) and s.images.dtype == torch.uint8
    assert s.labels.dtype == torch.int64 and s.protocol == "cactus-by-image"
    from sklearn.datasets import load_digits

    raw = load_digits().images
    assert s.images[:, 0].numpy().tolist() == np.round(raw * 255 / 16).astype(np.uint8).tolist()
    assert int(s.images.max()) == 255 and (s.images == 0).float().mean() > 0.4
    _check_disjoint_cover(s, ["train", "test"])
    n_class = s.labels.bincount()
    n_train = s.labels[s.splits["train"]].bincount()
    assert ((n_train - n_class * 2 / 3).abs() <= 0.5).all()
    again = Digits().load(ctx)
    assert all(torch.equal(s.splits[k], again.splits[k]) for k in s.splits)
    assert not (tmp_path / "no-such-root").exists() and not (tmp_path / "no-cache").exists()


def test_digits_prepare_image_roundtrips(tmp_path):
    """Every digit written as a PNG comes back identical; other greys snap to the nearest of 17 levels."""
    s = Digits().load(DataContext(tmp_path, tmp_path))
    for x in s.images:
        assert torch.equal(Digits().prepare_image(_png_roundtrip(x), {}), x)
    levels = digits.to_uint8(torch.arange(17))
    grey = torch.arange(256, dtype=torch.uint8).view(4, 8, 8)
    for g in grey:
        got = Digits().prepare_image(_png_roundtrip(g.unsqueeze(0)), {})[0]
        assert torch.isin(got, levels).all()
        dist = (g.view(-1, 1).int() - levels.view(1, -1).int()).abs()
        assert torch.equal((got.view(-1).int() - g.view(-1).int()).abs(), dist.min(1).values)
    with pytest.raises(PluginError, match="8x8"):
        Digits().prepare_image(Image.new("L", (28, 28)), {})


# ---------------------------------------------------------------------------------------- datacache


def test_cached_tensors_builds_once_and_rebuilds_corrupt(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(5)}

    assert torch.equal(cached_tensors(tmp_path, "k", build)["x"], torch.arange(5))
    assert torch.equal(cached_tensors(tmp_path, "k", build)["x"], torch.arange(5))
    assert len(calls) == 1
    (tmp_path / "k.pt").write_bytes(b"not a torch file")
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        assert torch.equal(cached_tensors(tmp_path, "k", build)["x"], torch.arange(5))
    assert len(calls) == 2
    torch.save([1, 2], tmp_path / "k.pt")  # valid file, wrong content
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        cached_tensors(tmp_path, "k", build)
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pt"]  # no temp files left behind
    with pytest.raises(ValueError):
        cached_tensors(tmp_path, "../escape", build)


def test_cache_key_tracks_source_files(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"1234")
    k1 = cache_key("ds", 1, [f], root=tmp_path)
    assert k1.startswith("ds-v1-") and k1 == cache_key("ds", 1, [f], root=tmp_path)
    assert cache_key("ds", 2, [f], root=tmp_path) != k1
    assert cache_key("ds", 1, [f], root=tmp_path, size=32) != k1
    os.utime(f, ns=(0, f.stat().st_mtime_ns + 10**9))
    assert cache_key("ds", 1, [f], root=tmp_path) != k1
    shutil.copy2(f, tmp_path / "b.bin")
    assert cache_key("ds", 1, [tmp_path / "b.bin"], root=tmp_path) != cache_key("ds", 1, [f], root=tmp_path)


# --------------------------------------------------------------------------------- data root intact


def test_data_root_untouched(root_before, data_root, omni, mnist_set):
    """Runs last: loading everything above left the data root exactly as it was."""
    assert _snapshot(data_root) == root_before
