"""The natural-image datasets (miniImageNet, tieredImageNet, CIFAR-FS, FC100, CUB) on small files generated in
each published format, the real split files where present, the ResNet-12 backbone, cross-domain suites and a
CPU smoke suite."""
from __future__ import annotations

import io
import json
import os
import pickle
import time
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metabench import DataContext, DatasetNotFoundError, ImageSet, PluginError
from metabench.toolkit import image_formats
from metabench.toolkit.augment import PROFILES, augment
from metabench.toolkit.episodes import EpisodeSampler
from metabench_plugins.datasets import cifar_fs, cub, fc100, miniimagenet, tieredimagenet

REPO = Path(__file__).resolve().parents[1]
PLUGINS = [(miniimagenet, miniimagenet.MiniImageNet, 84), (tieredimagenet, tieredimagenet.TieredImageNet, 84),
           (cifar_fs, cifar_fs.CIFARFS, 32), (fc100, fc100.FC100, 32), (cub, cub.CUB, 84)]
#: CIFAR-100's 20 superclasses in coarse-label order (the dataset's ``meta``).
CIFAR_COARSE = ["aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
                "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
                "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
                "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
                "vehicles_1", "vehicles_2"]


# ------------------------------------------------------------------------------------------- fixtures


def picture(code: int, i: int, h: int, w: int) -> np.ndarray:
    """A ``[h, w, 3]`` uint8 image: red = ``code`` everywhere (the class), green = 10 i, blue a ramp."""
    x = np.zeros((h, w, 3), np.uint8)
    x[..., 0] = code
    x[..., 1] = (10 * i) % 256
    x[..., 2] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    return x


def png(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="PNG")
    return buf.getvalue()


def code(k: int) -> int:
    """The red value of class number ``k`` of a fixture."""
    return 12 * k + 6


MINI = {"train": [f"n0{k:07d}" for k in range(5)], "val": [f"n0{k:07d}" for k in range(5, 7)],
        "test": [f"n0{k:07d}" for k in range(7, 10)]}
MINI_CODE = {w: code(k) for k, w in enumerate(MINI["train"] + MINI["val"] + MINI["test"])}
PER_CLASS = 12


def mini_csvs(root: Path) -> None:
    folder = root / "splits" / "miniImagenet" / "ravi"
    folder.mkdir(parents=True, exist_ok=True)
    for s, wnids in MINI.items():
        rows = [f"{w}{i:08d}.png,{w}" for w in wnids for i in range(PER_CLASS)]
        (folder / f"{s}.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")


def make_mini_pickles(root: Path) -> Path:
    """``mini-imagenet-cache-{split}.pkl`` with the classes' images interleaved (class_dict says which)."""
    base = root / "miniImagenet"
    base.mkdir(parents=True, exist_ok=True)
    for s, wnids in MINI.items():
        images, class_dict = [], {w: [] for w in reversed(wnids)}  # dict order differs from the CSV's
        for i in range(PER_CLASS):
            for w in wnids:
                class_dict[w].append(len(images))
                images.append(picture(MINI_CODE[w], i, 84, 84))
        with open(base / f"mini-imagenet-cache-{s}.pkl", "wb") as fh:
            pickle.dump({"image_data": np.stack(images), "class_dict": class_dict}, fh, protocol=4)
    mini_csvs(root)
    return base


def make_mini_folder(root: Path, layout: str) -> Path:
    """The images as files: ``flat`` (images/<file>), ``wnid`` (images/<wnid>/<file>), ``split``
    (<split>/<wnid>/<file>)."""
    base = root / "miniImagenet"
    for s, wnids in MINI.items():
        for w in wnids:
            for i in range(PER_CLASS):
                name = f"{w}{i:08d}.png"
                path = {"flat": base / "images" / name, "wnid": base / "images" / w / name,
                        "split": base / s / w / name}[layout]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png(picture(MINI_CODE[w], i, 84, 84)))
    mini_csvs(root)
    return base


TIERED = {"train": 4, "val": 2, "test": 3}


def make_tiered(root: Path, variant: str) -> Path:
    """Ren et al.'s files: ``png`` (list of PNG-encoded uint8 arrays) or ``npz``, with the labels pickles."""
    base = root / "tiered-imagenet"
    base.mkdir(parents=True, exist_ok=True)
    offset = 0
    for s, n in TIERED.items():
        labels = np.array([i % n for i in range(n * 5)], dtype=np.int64)  # classes interleaved
        images = np.stack([picture(code(offset + c), i, 84, 84) for i, c in enumerate(labels)])
        names = [f"{s}_class{c}" for c in range(n)]
        key = (lambda k: k.encode()) if variant == "npz" else str  # as read with encoding="bytes", or not
        with open(base / f"{s}_labels.pkl", "wb") as fh:
            pickle.dump({key("label_specific"): labels, key("label_general"): labels // 2,
                         key("label_specific_str"): names, key("label_general_str"): ["g0", "g1"]}, fh, protocol=2)
        if variant == "png":
            with open(base / f"{s}_images_png.pkl", "wb") as fh:
                pickle.dump([np.frombuffer(png(x), np.uint8) for x in images], fh, protocol=2)
        else:
            np.savez(base / f"{s}_images.npz", images=images)
        offset += n
    return base


N_FINE = 20  # fixture CIFAR-100: 20 fine classes, fine class i in superclass i, 8 images each
CIFAR_FS_SPLIT = {"train": [f"fine{i:02d}" for i in range(0, 10)], "val": [f"fine{i:02d}" for i in range(10, 14)],
                  "test": [f"fine{i:02d}" for i in range(14, 20)]}


def make_cifar(root: Path, split_format: str = "json") -> Path:
    """CIFAR-100's python pickles (Python 2 style: bytes keys) and CIFAR-FS / FC100 split lists."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", 6), ("test", 2)):
        fine = [c for i in range(n) for c in range(N_FINE)]
        data = np.stack([picture(code(c), i + (0 if part == "train" else 6), 32, 32).transpose(2, 0, 1).reshape(-1)
                         for i in range(n) for c in range(N_FINE)])
        with open(base / part, "wb") as fh:
            pickle.dump({b"data": data, b"fine_labels": fine, b"coarse_labels": list(fine),
                         b"filenames": [b"x.png"] * len(fine)}, fh, protocol=2)
    with open(base / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"fine{i:02d}".encode() for i in range(N_FINE)],
                     b"coarse_label_names": [n.encode() for n in CIFAR_COARSE]}, fh, protocol=2)
    folder = root / "splits" / "cifar-fs" / "bertinetto"
    folder.mkdir(parents=True, exist_ok=True)
    for s, names in CIFAR_FS_SPLIT.items():
        if split_format == "json":
            (folder / f"{s}.json").write_text(json.dumps([[CIFAR_COARSE[int(n[4:])], n] for n in names]))
        else:
            (folder / f"{s}.txt").write_text("\n".join(names) + "\n")
    return base


def make_cub(root: Path, classes: int) -> Path:
    """``CUB_200_2011/images/NNN.Name/*.jpg``: JPEGs of varying sizes (resized to 84x84 on load)."""
    images = root / "CUB_200_2011" / "images"
    for k in range(classes):
        folder = images / f"{k + 1:03d}.Bird_{k}"
        folder.mkdir(parents=True)
        for i in range(3 + k % 3):
            x = np.full((90 + 3 * k, 100 + i, 3), code(k), np.uint8)
            Image.fromarray(x).save(folder / f"Bird_{k}_{i:04d}_{k}.jpg", quality=95)
    return images


def load(cls, root: Path, cache: Path, **options) -> ImageSet:
    return cls().load(DataContext(root, cache, cls.resolve_options(options)))


def class_codes(s: ImageSet, split: str) -> list[int]:
    """The red value of each class of ``split``, in label order (one value per class, checked)."""
    labels = s.labels[s.splits[split]]
    out = []
    for c in labels.unique().tolist():
        reds = s.images[s.labels == c][:, 0]
        assert int(reds.max()) - int(reds.min()) <= 2, "a class mixes images of two fixture classes"
        out.append(int(reds.float().mean().round()))
    return out


def check_partition(s: ImageSet, n_classes: dict[str, int]) -> None:
    idx = torch.cat([s.splits[k] for k in s.splits])
    assert torch.equal(idx.sort().values, torch.arange(len(s.images)))
    classes = {k: set(s.labels[v].tolist()) for k, v in s.splits.items()}
    assert {k: len(v) for k, v in classes.items()} == n_classes
    assert not (classes["train"] & classes["test"]) and not (classes["train"] & classes.get("val", set()))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            st = os.stat(os.path.join(dirpath, n))
            out[os.path.join(dirpath, n)] = (st.st_size, st.st_mtime_ns)
    return out


# ------------------------------------------------------------------------------------------ plugins


@pytest.mark.parametrize("module,cls,size", PLUGINS)
def test_plugin_surface(module, cls, size):
    assert module.metabench_datasets() == [cls]
    assert cls.name and cls.description and "\n" not in cls.description and cls.paper and module.__doc__
    assert cls.defaults == {"size": size} and cls.augmentation == "natural" and "natural" in PROFILES
    eps = {ep.name: ep.value for ep in entry_points(group="metabench")}
    assert eps.get(cls.name) == module.__name__


@pytest.mark.parametrize("module,cls,size", PLUGINS)
def test_missing_dataset_names_what_was_looked_for(module, cls, size, tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load(cls, tmp_path / "empty", tmp_path / "cache")
    msg = str(err.value)
    assert str(tmp_path / "empty") in msg and "METABENCH_DATA" in msg
    assert not (tmp_path / "cache").exists()


# -------------------------------------------------------------------------------------- miniImageNet


def test_miniimagenet_pickles_load_split_and_label(tmp_path):
    root = tmp_path / "data"
    make_mini_pickles(root)
    s = load(miniimagenet.MiniImageNet, root, tmp_path / "cache")
    assert s.images.shape == (10 * PER_CLASS, 3, 84, 84) and s.images.dtype == torch.uint8
    assert s.protocol == "ravi-by-class" and s.image_shape == (3, 84, 84)
    check_partition(s, {"train": 5, "val": 2, "test": 3})
    for split, wnids in MINI.items():  # classes in the CSV's order, each holding its own images
        assert class_codes(s, split) == [MINI_CODE[w] for w in wnids]
    first = s.images[s.labels == 0]
    assert first[:, 1, 0, 0].tolist() == [10 * i for i in range(PER_CLASS)]  # class_dict's order kept


@pytest.mark.parametrize("layout", ["flat", "wnid", "split"])
def test_miniimagenet_image_folders_equal_the_pickles(layout, tmp_path):
    make_mini_pickles(tmp_path / "pk")
    make_mini_folder(tmp_path / "img", layout)
    a = load(miniimagenet.MiniImageNet, tmp_path / "pk", tmp_path / "cache")
    b = load(miniimagenet.MiniImageNet, tmp_path / "img", tmp_path / "cache")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert all(torch.equal(a.splits[k], b.splits[k]) for k in a.splits)


def test_miniimagenet_pickle_must_hold_the_split_csvs_classes(tmp_path):
    root = tmp_path / "data"
    make_mini_pickles(root)
    csv = root / "splits/miniImagenet/ravi/val.csv"
    csv.write_text(csv.read_text().replace(MINI["val"][0], "n09999999"))
    with pytest.raises(PluginError, match=r"mini-imagenet-cache-val\.pkl are not those of .*val\.csv"):
        load(miniimagenet.MiniImageNet, root, tmp_path / "cache")


def test_miniimagenet_truncated_pickle_is_named(tmp_path):
    root = tmp_path / "data"
    base = make_mini_pickles(root)
    path = base / "mini-imagenet-cache-test.pkl"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(PluginError, match="truncated") as err:
        load(miniimagenet.MiniImageNet, root, tmp_path / "cache")
    assert str(path) in str(err.value)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    root = tmp_path / "data"
    base = make_mini_pickles(root)
    path = base / "mini-imagenet-cache-val.pkl"
    path.write_bytes(pickle.dumps({"image_data": os.system, "class_dict": {}}))
    with pytest.raises(PluginError, match="refusing to load") as err:
        load(miniimagenet.MiniImageNet, root, tmp_path / "cache")
    assert str(path) in str(err.value)


def test_miniimagenet_incomplete_pickles_and_missing_split_file_are_named(tmp_path):
    root = tmp_path / "data"
    base = make_mini_pickles(root)
    (base / "mini-imagenet-cache-val.pkl").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"mini-imagenet-cache-val\.pkl missing"):
        load(miniimagenet.MiniImageNet, root, tmp_path / "cache")
    folder_root = tmp_path / "folder"
    make_mini_folder(folder_root, "flat")
    (folder_root / "splits/miniImagenet/ravi/val.csv").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        load(miniimagenet.MiniImageNet, folder_root, tmp_path / "cache")
    assert str(folder_root / "splits/miniImagenet/ravi/val.csv") in str(err.value)
    assert "filename" in str(err.value) or "csv" in str(err.value)
    # an image the CSV names but the folder lacks
    make_mini_folder(folder_root, "flat")
    (folder_root / "miniImagenet/images" / f"{MINI['test'][1]}{0:08d}.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=f"{MINI['test'][1]}00000000.png"):
        load(miniimagenet.MiniImageNet, folder_root, tmp_path / "cache2")


def test_cache_decodes_once_outside_the_data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_mini_pickles(root)
    before = snapshot(root)
    first = load(miniimagenet.MiniImageNet, root, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("miniimagenet-*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(miniimagenet, "read_pickle", no_decoding)
    t = time.perf_counter()
    again = load(miniimagenet.MiniImageNet, root, tmp_path / "cache")
    assert time.perf_counter() - t < 5
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert snapshot(root) == before  # nothing written under the data root
    with pytest.raises(AssertionError, match="decoded again"):  # another size is another entry
        load(miniimagenet.MiniImageNet, root, tmp_path / "cache", size=42)


def test_size_option_and_prepare_image(tmp_path):
    root = tmp_path / "data"
    make_mini_folder(root, "wnid")
    small = load(miniimagenet.MiniImageNet, root, tmp_path / "cache", size=42)
    assert small.images.shape == (10 * PER_CLASS, 3, 42, 42)
    full = load(miniimagenet.MiniImageNet, root, tmp_path / "cache")
    w = MINI["val"][1]
    with Image.open(root / "miniImagenet/images" / w / f"{w}{3:08d}.png") as im:
        for s, opts in ((full, {"size": 84}), (small, {"size": 42})):
            got = miniimagenet.MiniImageNet().prepare_image(im, opts)
            label = 5 + 1  # val's second class
            assert got.dtype == torch.uint8 and torch.equal(got, s.images[s.labels == label][3])
    with pytest.raises(PluginError, match="size"):
        load(miniimagenet.MiniImageNet, root, tmp_path / "cache", size="big")


def test_episodes_from_a_natural_split(tmp_path):
    root = tmp_path / "data"
    make_mini_pickles(root)
    s = load(miniimagenet.MiniImageNet, root, tmp_path / "cache")
    train = s.split("train")
    batch = EpisodeSampler(train.images, train.labels, 4, 2, 3).sample(6, torch.Generator().manual_seed(0))
    batch.check("test", 6, 4, 2, 3, (3, 84, 84))
    assert batch.support_x.dtype == torch.float32 and float(batch.support_x.max()) <= 1.0
    reds = (batch.support_x[:, :, 0, 0, 0] * 255).round().long()        # [T, N*K]: each class one code
    for t in range(6):
        per_class = reds[t].view(4, 2)
        assert torch.all(per_class[:, 0] == per_class[:, 1])
        assert len(set(per_class[:, 0].tolist())) == 4
        assert set(per_class[:, 0].tolist()) <= {MINI_CODE[w] for w in MINI["train"]}
    q = (batch.query_x[:, :, 0, 0, 0] * 255).round().long().view(6, 4, 3)
    assert torch.equal(q[:, :, 0], reds.view(6, 4, 2)[:, :, 0])  # queries of class c share its code


def test_real_ravi_split_files(data_root):
    folder = data_root / "splits/miniImagenet/ravi"
    if not folder.is_dir():
        pytest.skip("no Ravi split files under the data root")
    rows = {s: image_formats.read_split_csv(folder / f"{s}.csv", "miniimagenet") for s in ("train", "val", "test")}
    classes = {s: {label for _, label in r} for s, r in rows.items()}
    assert {s: len(c) for s, c in classes.items()} == {"train": 64, "val": 16, "test": 20}
    assert {s: len(r) for s, r in rows.items()} == {"train": 38400, "val": 9600, "test": 12000}
    assert not (classes["train"] & classes["val"] or classes["train"] & classes["test"] or classes["val"] & classes["test"])
    assert all(f.startswith(label) for r in rows.values() for f, label in r)


# ------------------------------------------------------------------------------------ tieredImageNet


def test_tieredimagenet_png_pickles_and_npz_agree(tmp_path):
    sets = []
    for variant in ("png", "npz"):
        root = tmp_path / variant
        make_tiered(root, variant)
        sets.append(load(tieredimagenet.TieredImageNet, root, tmp_path / "cache"))
    a, b = sets
    assert a.images.shape == (sum(TIERED.values()) * 5, 3, 84, 84) and a.protocol == "ren-by-category"
    check_partition(a, TIERED)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert class_codes(a, "val") == [code(4), code(5)] and class_codes(a, "test") == [code(6), code(7), code(8)]
    assert a.labels.bincount().tolist() == [5] * 9


def test_tieredimagenet_truncated_or_missing_files_are_named(tmp_path):
    root = tmp_path / "data"
    base = make_tiered(root, "png")
    labels = base / "val_labels.pkl"
    labels.write_bytes(labels.read_bytes()[:40])
    with pytest.raises(PluginError, match="truncated") as err:
        load(tieredimagenet.TieredImageNet, root, tmp_path / "cache")
    assert str(labels) in str(err.value)
    labels.unlink()
    with pytest.raises(DatasetNotFoundError, match="val_labels.pkl"):
        load(tieredimagenet.TieredImageNet, root, tmp_path / "cache")
    npz_root = tmp_path / "npz"
    nb = make_tiered(npz_root, "npz")
    z = nb / "test_images.npz"
    z.write_bytes(z.read_bytes()[:300])
    with pytest.raises(PluginError, match="test_images.npz"):
        load(tieredimagenet.TieredImageNet, npz_root, tmp_path / "cache")


def test_tieredimagenet_image_folder(tmp_path):
    base = tmp_path / "data" / "tiered-imagenet"
    for s, n in TIERED.items():
        for c in range(n):
            folder = base / s / f"{s}_c{c}"
            folder.mkdir(parents=True)
            for i in range(4):
                (folder / f"{i}.png").write_bytes(png(picture(code(c), i, 60, 70)))
    s = load(tieredimagenet.TieredImageNet, tmp_path / "data", tmp_path / "cache")
    check_partition(s, TIERED)
    assert s.images.shape[1:] == (3, 84, 84) and class_codes(s, "train") == [code(c) for c in range(4)]


# ----------------------------------------------------------------------------------- CIFAR-FS, FC100


@pytest.mark.parametrize("split_format", ["json", "txt"])
def test_cifar_fs_from_cifar100_pickles(split_format, tmp_path):
    root = tmp_path / "data"
    make_cifar(root, split_format)
    s = load(cifar_fs.CIFARFS, root, tmp_path / "cache")
    assert s.images.shape == (N_FINE * 8, 3, 32, 32) and s.protocol == "bertinetto-by-class"
    check_partition(s, {"train": 10, "val": 4, "test": 6})
    for split, names in CIFAR_FS_SPLIT.items():
        assert class_codes(s, split) == [code(int(n[4:])) for n in names]
    # train images first, then test images of the class (green = 10 i, i = 0..7)
    assert s.images[s.labels == 0][:, 1, 0, 0].tolist() == [10 * i for i in range(8)]
    big = load(cifar_fs.CIFARFS, root, tmp_path / "cache", size=84)
    assert big.images.shape[1:] == (3, 84, 84) and torch.equal(big.labels, s.labels)


def test_cifar_fs_image_folder_equals_pickles(tmp_path):
    root = tmp_path / "data"
    make_cifar(root)
    pickles = load(cifar_fs.CIFARFS, root, tmp_path / "cache")
    folder_root = tmp_path / "folder"
    (folder_root / "splits").mkdir(parents=True)
    os.symlink(root / "splits" / "cifar-fs", folder_root / "splits" / "cifar-fs")
    for c in range(N_FINE):
        d = folder_root / "cifar100" / "data" / f"fine{c:02d}"
        d.mkdir(parents=True)
        for i in range(8):
            (d / f"{i:03d}.png").write_bytes(png(picture(code(c), i, 32, 32)))
    folder = load(cifar_fs.CIFARFS, folder_root, tmp_path / "cache")
    assert torch.equal(folder.images, pickles.images) and torch.equal(folder.labels, pickles.labels)


def test_cifar_truncated_pickle_and_missing_split_file_are_named(tmp_path):
    root = tmp_path / "data"
    make_cifar(root)
    (root / "splits/cifar-fs/bertinetto/test.json").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        load(cifar_fs.CIFARFS, root, tmp_path / "cache")
    assert str(root / "splits/cifar-fs/bertinetto/test.json") in str(err.value)
    make_cifar(root)
    train = root / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:1000])
    for cls in (cifar_fs.CIFARFS, fc100.FC100):
        with pytest.raises(PluginError, match="truncated") as err:
            load(cls, root, tmp_path / "cache")
        assert str(train) in str(err.value)
    (root / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DatasetNotFoundError, match="meta"):
        load(fc100.FC100, root, tmp_path / "cache")


def test_fc100_superclass_split(tmp_path):
    root = tmp_path / "data"
    make_cifar(root)
    s = load(fc100.FC100, root, tmp_path / "cache")  # no split files: Oreshkin et al.'s, built in
    assert s.protocol == "oreshkin-by-superclass"
    check_partition(s, {"train": 12, "val": 4, "test": 4})
    for split, supers in fc100.ORESHKIN.items():  # fixture: fine class i is in superclass i
        assert class_codes(s, split) == [code(i) for i in supers]
    folder = root / "splits" / "fc100"
    folder.mkdir(parents=True)
    custom = {"train": CIFAR_COARSE[:14], "val": CIFAR_COARSE[14:16], "test": CIFAR_COARSE[16:]}
    for split, names in custom.items():
        (folder / f"{split}.json").write_text(json.dumps(names))
    t = load(fc100.FC100, root, tmp_path / "cache")  # the files' split, and a new cache entry
    check_partition(t, {"train": 14, "val": 2, "test": 4})
    assert class_codes(t, "test") == [code(i) for i in range(16, 20)]
    (folder / "val.json").unlink()
    with pytest.raises(DatasetNotFoundError, match="val.json"):
        load(fc100.FC100, root, tmp_path / "cache")


def test_real_cifar_fs_and_fc100_split_files(data_root):
    folder = data_root / "splits"
    if not (folder / "cifar-fs").is_dir() or not (folder / "fc100").is_dir():
        pytest.skip("no CIFAR-FS / FC100 split files under the data root")
    fs = {s: image_formats.read_class_list(folder / f"cifar-fs/bertinetto/{s}.json", "t") for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in fs.items()} == {"train": 64, "val": 16, "test": 20}
    fine = [c[-1] for v in fs.values() for c in v]
    assert len(set(fine)) == 100 and {c[0] for v in fs.values() for c in v} == set(CIFAR_COARSE)
    fc = {s: image_formats.read_class_list(folder / f"fc100/{s}.json", "t") for s in ("train", "val", "test")}
    assert {s: [CIFAR_COARSE.index(n) for n in names] for s, names in fc.items()} == fc100.ORESHKIN


# ------------------------------------------------------------------------------------------------ CUB


def test_cub_chen_split(tmp_path, monkeypatch):
    monkeypatch.setattr(cub, "CLASSES", 16)
    root = tmp_path / "data"
    make_cub(root, 16)
    s = load(cub.CUB, root, tmp_path / "cache")
    assert s.images.shape[1:] == (3, 84, 84) and s.protocol == "chen-by-class"
    check_partition(s, {"train": 8, "val": 4, "test": 4})
    assert [c // 1 for c in class_codes(s, "train")] == [code(k) for k in range(0, 16, 2)]
    assert class_codes(s, "val") == [code(k) for k in (1, 5, 9, 13)]
    assert class_codes(s, "test") == [code(k) for k in (3, 7, 11, 15)]
    assert s.labels.bincount().tolist() == [3 + k % 3 for k in [*range(0, 16, 2), 1, 5, 9, 13, 3, 7, 11, 15]]


def test_cub_rule_on_200_classes_and_partial_folders(tmp_path, monkeypatch):
    names = [f"{k:03d}.Bird" for k in range(200, 0, -1)]  # listed in any order: sorted first
    split = cub.chen_split(names)
    assert [len(split[s]) for s in ("train", "val", "test")] == [100, 50, 50]
    assert split["train"][:2] == ["001.Bird", "003.Bird"] and split["val"][:2] == ["002.Bird", "006.Bird"]
    assert split["test"][:2] == ["004.Bird", "008.Bird"] and "200.Bird" in split["test"]
    make_cub(tmp_path / "data", 7)
    with pytest.raises(PluginError, match="7 class folders.*expected 200"):
        load(cub.CUB, tmp_path / "data", tmp_path / "cache")


# ---------------------------------------------------------------------------------- augmentation


def test_natural_profile_colour_jitter_is_masked_and_batched():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    x = torch.rand(64, 3, 16, 16, generator=g(0))
    y = augment(x, g(1), "natural")
    assert y.shape == x.shape and torch.equal(y, augment(x, g(1), "natural"))
    # jitter_p = 0 with no geometry and no greyscale: every image untouched
    plain = dict(crop=1.0, hflip=0.0, grayscale=0.0)
    assert torch.allclose(augment(x, g(2), "natural", jitter_p=0.0, **plain), x, atol=1e-6)
    # hue and saturation only: grey levels (luma) kept, colours changed
    z = augment(x, g(3), "none", saturation=0.4, hue=0.1)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    inside = (z > 0) & (z < 1)
    assert inside.all(1).float().mean() > 0.5
    ok = inside.all(1, keepdim=True)
    assert torch.allclose(((z * luma).sum(1, keepdim=True))[ok], ((x * luma).sum(1, keepdim=True))[ok], atol=1e-5)
    assert (z - x).abs().mean() > 0.01
    # about jitter_p of the images jittered
    j = augment(x, g(4), "none", jitter=0.4, jitter_p=0.5)
    changed = ((j - x).abs().flatten(1).max(1).values > 1e-6).float().mean()
    assert 0.25 < float(changed) < 0.75


# ------------------------------------------------------------------------------------------- backbones


def test_backbones():
    from metabench.toolkit.nets import Conv4, ResNet12, backbone
    torch.manual_seed(0)
    a = backbone("conv4", (1, 28, 28))
    torch.manual_seed(0)
    b = Conv4((1, 28, 28))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    r = backbone("resnet12", (3, 84, 84))
    assert isinstance(r, ResNet12) and r.out_dim == 640
    widths = [blk.body[0].out_channels for blk in r.blocks]
    assert widths == [64, 160, 320, 640]
    small = backbone("resnet12", (3, 84, 84), hidden=4)
    assert small(torch.rand(2, 3, 84, 84)).shape == (2, 40)
    assert backbone("resnet12", (1, 8, 8), hidden=2)(torch.rand(3, 1, 8, 8)).shape == (3, 20)
    with pytest.raises(ValueError, match="resnet12"):
        backbone("vgg", (3, 84, 84))


def test_maml_inner_loop_runs_through_a_resnet12():
    """functional_call + vmap with second-order gradients through ResNet-12's per-task batch norm: the
    batched path gives the per-task loop's meta-gradient."""
    from metabench.toolkit.inner_loop import InnerLoop, MetaModel, meta_backward
    torch.manual_seed(0)
    m = MetaModel((3, 12, 12), 3, hidden=2, backbone="resnet12").double()
    params = dict(m.named_parameters())
    g = torch.Generator().manual_seed(0)
    sx, qx = torch.rand(2, 3, 3, 12, 12, generator=g).double(), torch.rand(2, 6, 3, 12, 12, generator=g).double()
    sy, qy = torch.arange(3).repeat(2, 1), torch.arange(3).repeat_interleave(2).repeat(2, 1)
    grads = {}
    for path in ("loop", "batched"):
        for p in params.values():
            p.grad = None
        losses = meta_backward(m, params, sx, sy, qx, qy, InnerLoop(1, 0.1, False), None, path)
        assert torch.isfinite(losses).all()
        grads[path] = torch.cat([p.grad.flatten() for p in params.values()])
    assert grads["loop"].abs().sum() > 0
    # float64 round-off through ResNet-12's second order reaches ~3e-12 on entries of ~1e-3 (one torch thread),
    # against gradients of up to ~20; the batching bug this guards against is off by percents
    assert torch.allclose(grads["loop"], grads["batched"], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["protonet", "ssl_protonet", "maml", "fomaml", "metasgd", "anil", "reptile"])
def test_backbone_option_of_the_algorithms(name):
    from metabench import EpisodeBatch, RunContext, UnlabeledSplit
    from metabench.engine.registry import discover
    cls = discover().get("algorithm", name).cls
    assert cls.defaults["backbone"] == "conv4"
    small = {"protonet": {}, "ssl_protonet": {"pretrain_steps": 1, "pretrain_ways": 3, "pretrain_queries": 1},
             "reptile": {"inner_steps": 1, "test_inner_steps": 1, "inner_batch": 3, "test_inner_batch": 3}}
    opts = cls.resolve_options({"backbone": "resnet12", "hidden": 2, **small.get(name, {})})
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    ctx = RunContext(torch.device("cpu"), 0, 3, 1, 1, (3, 16, 16), opts, unlabeled=UnlabeledSplit(images))
    alg = cls()
    alg.setup(ctx)
    assert any("blocks.3.shortcut" in k for k in alg.state_dict().get("net", alg.state_dict().get("model", {})))
    x = torch.rand(2, 3, 3, 16, 16)
    y = torch.arange(3).repeat(2, 1)
    loss = alg.train_step(EpisodeBatch(x, y, x.clone(), y.clone(), 3), 0)
    assert np.isfinite(loss)
    assert alg.predict(x, y, x, 3).shape == (2, 3, 3) and alg.embed(x[0]).shape == (3, 20)
    with pytest.raises(PluginError, match="unknown backbone"):
        cls().setup(RunContext(torch.device("cpu"), 0, 3, 1, 1, (3, 16, 16), {**opts, "backbone": "vgg"},
                               unlabeled=UnlabeledSplit(images)))


# --------------------------------------------------------------------------------- suites, smoke run


def test_cross_domain_protocols_in_suites(tmp_path):
    from metabench.engine.suite import SuiteError, episode_seed, load_suite, parse_suite
    suite = load_suite(REPO / "suites" / "cross-domain.toml")
    runs = suite.runs()
    assert {r.test_dataset for r in runs} == {"cub", "cifar_fs"} and {r.dataset for r in runs} == {"miniimagenet"}
    r = next(r for r in runs if r.test_dataset == "cifar_fs")
    assert r.run_id.split("__")[3].endswith("-on-cifar_fs") and r.config()["test_dataset"] == "cifar_fs"
    assert r.options["cifar_fs"] == {"size": 84}
    t = r.protocol.tests[0]
    assert r.test_seed(t) == episode_seed("cifar_fs", t, r.seed)  # the in-domain cifar_fs runs' episodes
    full = load_suite(REPO / "suites" / "miniimagenet-full.toml").runs()
    assert all(run.test_dataset == run.dataset == "miniimagenet" and "test_dataset" not in run.config()
               for run in full)
    base = {"datasets": ["digits"], "task_generators": ["oracle"], "algorithms": ["protonet"],
            "budget": {"steps": 1, "meta_batch": 1, "test_episodes": 2}}
    plain = parse_suite({**base, "protocols": [{"ways": 2, "shots": 1, "queries": 1}]}, "x")
    assert "test_dataset" not in plain.runs()[0].config() and "-on-" not in plain.runs()[0].run_id
    cross = {**base, "protocols": [{"ways": 2, "shots": 1, "queries": 1},
                                   {"ways": 2, "shots": 1, "queries": 1, "test_dataset": "mnist"}]}
    assert len(parse_suite(cross, "x").runs()) == 2
    only_cross = parse_suite({**cross, "exclude": [{"test_dataset": "digits"}]}, "x").runs()
    assert [r.test_dataset for r in only_cross] == ["mnist"]
    with pytest.raises(SuiteError, match="test_dataset"):
        parse_suite({**base, "protocols": [{"ways": 2, "shots": 1, "queries": 1, "test_dataset": 3}]}, "x")


def test_smoke_suite_runs_on_generated_fixtures(tmp_path, capsys):
    """suites/natural-smoke-cpu.toml: UMTRA, CACTUs and the oracle with ProtoNet ResNet-12 on miniImageNet
    pickles, tested in-domain and on CIFAR-FS (84x84) cross-domain; every run ok (32-74 s on two busy cores:
    unsupervised runs start a sealed worker each); `evaluate` re-scores a kept cross-domain model exactly."""
    from metabench.commands.cli import main
    from metabench.engine.records import read_record
    root = tmp_path / "data"
    make_mini_pickles(root)
    make_cifar(root)
    t = time.perf_counter()
    rc = main(["run", str(REPO / "suites" / "natural-smoke-cpu.toml"), "--data-root", str(root), "--cache-dir",
               str(tmp_path / "cache"), "--results", str(tmp_path / "results"), "--save-models"])
    took = time.perf_counter() - t
    records = [read_record(p) for p in sorted((tmp_path / "results" / "natural-smoke-cpu").glob("*.json"))]
    assert rc == 0, [r.get("error") for r in records]
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    cross = {r["config"]["task_generator"] for r in records if r["config"].get("test_dataset") == "cifar_fs"}
    own = {r["config"]["task_generator"] for r in records if "test_dataset" not in r["config"]}
    assert cross == {"cactus", "oracle"} and own == {"umtra", "oracle"}  # as the suite's [[exclude]] says
    assert all(r["config"]["options"]["cifar_fs"] == {"size": 84} for r in records if r["config"].get("test_dataset"))
    assert all(r["config"]["options"]["protonet"]["backbone"] == "resnet12" for r in records)
    for r in records:
        m = r["evaluations"][0]["metrics"]
        assert m["test_episodes"] == 4 and 0 <= m["accuracy_mean"] <= 1 and "nmi" in m
    print(f"natural smoke suite: {took:.1f}s")
    # a kept cross-domain model re-scores its record's own episodes (of the test dataset) bit for bit
    rec = next(r for r in records if r["config"].get("test_dataset") == "cifar_fs")
    model = tmp_path / "results" / "natural-smoke-cpu" / rec["model"]["file"]
    capsys.readouterr()
    assert main(["evaluate", str(model), "--data-root", str(root), "--cache-dir", str(tmp_path / "cache"),
                 "--json"]) == 0
    assert [r["matches_record"] for r in json.loads(capsys.readouterr().out)["results"]] == [True]
