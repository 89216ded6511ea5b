"""Episode sets: the JSON and folder layouts, the round trip from fixed index episodes, batching, and an
error naming the culprit for every kind of fault."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metabench.contracts import LabeledSplit, PluginError
from metabench.engine.episode_sets import (EpisodeSetError, inspect_episodes, load_episodes, stack_episodes,
                                           write_index_episodes)
from metabench.engine.evaluation import fixed_episode_indices
from metabench.toolkit.episodes import batch_from_indices, to_float

SIZE = 4


def prepare(im: Image.Image) -> torch.Tensor:
    """The toy dataset's prepare: grey, SIZE x SIZE, uint8 [1, H, W]."""
    return torch.from_numpy(np.array(im.convert("L").resize((SIZE, SIZE)))).unsqueeze(0)


def png(path: Path, value: int, size: int = SIZE, suffix_format: str = "PNG") -> Path:
    """A flat grey image whose pixel value identifies it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size, size), value).save(path, format=suffix_format)
    return path


def value(x: torch.Tensor) -> list[int]:
    """The identifying pixel value of each image of ``[M, C, H, W]``."""
    return x[:, 0, 0, 0].tolist()


def write_json(path: Path, episodes, **header) -> Path:
    doc = {"format": "metabench-episodes", "version": 1, **header, "episodes": episodes}
    path.write_text(json.dumps(doc))
    return path


def toy_split(classes: int = 6, per_class: int = 7) -> LabeledSplit:
    labels = torch.arange(classes).repeat_interleave(per_class) * 10 + 3   # sparse true labels
    images = torch.arange(labels.numel(), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    return LabeledSplit(images, labels)


# ------------------------------------------------------------------------------------- happy paths


def test_json_path_items_labels_order_and_counts(tmp_path):
    for v in (10, 11, 20, 21, 30, 31, 40):
        png(tmp_path / "img" / f"{v}.png", v)
    ep = {"support": [{"class": "b", "path": "img/20.png"}, {"class": "a", "path": "img/10.png"},
                      {"class": "b", "path": "img/21.png"}, {"class": "a", "path": "img/11.png"}],
          "query": [{"class": "b", "path": "img/30.png"}, {"class": "a", "path": str(tmp_path / "img/40.png")},
                    {"class": "b", "path": "img/31.png"}]}
    f = write_json(tmp_path / "eps.json", [ep])
    [e] = load_episodes(f, prepare=prepare)
    assert (e.ways, e.shots, e.queries, e.classes) == (2, 2, None, ("a", "b"))  # uneven query: 1 and 2
    assert value(e.support_x) == [10, 11, 20, 21] and e.support_y.tolist() == [0, 0, 1, 1]
    assert value(e.query_x) == [40, 30, 31] and e.query_y.tolist() == [0, 1, 1]
    assert e.support_x.dtype == torch.uint8 and e.support_x.shape == (4, 1, SIZE, SIZE)
    assert str(f) in e.source and "episode 0" in e.source
    info = inspect_episodes(f)
    assert (info.layout, info.dataset, info.split, info.episodes) == ("json", "", "test", 1)
    assert info.needs_prepare and not info.needs_split


def test_json_index_items_sort_integer_classes_numerically(tmp_path):
    split = toy_split()
    eps = [{"support": [{"class": 10, "index": 0}, {"class": 9, "index": 7}],
            "query": [{"class": 9, "index": 8}, {"class": 10, "index": 1}, {"class": 9, "index": 9},
                      {"class": 10, "index": 2}]},
           {"support": [{"class": 0, "index": 14}], "query": [{"class": 0, "index": 15}]}]
    f = write_json(tmp_path / "eps.json", eps, dataset="toy", split="val")
    info = inspect_episodes(f)
    assert (info.dataset, info.split, info.episodes) == ("toy", "val", 2)
    assert info.needs_split and not info.needs_prepare
    a, b = load_episodes(f, split=split)
    assert a.classes == (9, 10) and (a.ways, a.shots, a.queries) == (2, 1, 2)
    assert value(a.support_x) == [7, 0] and value(a.query_x) == [8, 9, 1, 2]
    assert a.query_y.tolist() == [0, 0, 1, 1]
    assert (b.ways, b.shots, b.queries) == (1, 1, 1) and a.image_shape == b.image_shape == (1, 2, 2)


def test_json_mixes_index_and_path_items(tmp_path):
    split = LabeledSplit(torch.full((3, 1, SIZE, SIZE), 7, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    png(tmp_path / "x.png", 99)
    f = write_json(tmp_path / "eps.json", [{"support": [{"class": 1, "index": 2}, {"class": 2, "path": "x.png"}],
                                            "query": [{"class": 2, "index": 0}]}])
    [e] = load_episodes(f, split=split, prepare=prepare)
    assert value(e.support_x) == [7, 99] and e.query_y.tolist() == [1]


def _folder_episode(root: Path, classes: dict[str, tuple[list[int], list[int]]], ext: str = ".png") -> None:
    for cls, (sup, qry) in classes.items():
        for part, values in (("support", sup), ("query", qry)):
            for j, v in enumerate(values):
                png(root / part / cls / f"img{j}{ext}", v, size=8, suffix_format="JPEG" if ext == ".jpg" else "PNG")


def test_folder_layout_sorts_episodes_and_classes_numerically(tmp_path):
    root = tmp_path / "set"
    _folder_episode(root / "10", {"10": ([100, 101], [102]), "9": ([90, 91], [92])})
    _folder_episode(root / "2", {"b": ([20, 21], [22, 23]), "a": ([10, 11], [12, 13])}, ext=".jpg")
    (root / "README.txt").write_text("plain files beside the episodes are ignored")
    (root / "2" / "support" / "a" / ".DS_Store").write_text("hidden")
    eps = load_episodes(root, prepare=prepare)
    assert [Path(e.source).name for e in eps] == ["2", "10"]
    first, second = eps
    assert first.classes == ("a", "b") and (first.ways, first.shots, first.queries) == (2, 2, 2)
    assert [abs(v - w) <= 3 for v, w in zip(value(first.support_x), [10, 11, 20, 21])] == [True] * 4  # JPEG
    assert second.classes == (9, 10) and value(second.support_x) == [90, 91, 100, 101]
    assert value(second.query_x) == [92, 102] and second.query_y.tolist() == [0, 1]
    assert first.support_x.shape == (4, 1, SIZE, SIZE)  # prepare resized
    info = inspect_episodes(root)
    assert (info.layout, info.episodes, info.needs_prepare, info.needs_split) == ("folder", 2, True, False)


def test_a_folder_with_support_and_query_is_one_episode(tmp_path):
    _folder_episode(tmp_path / "ep", {"cat": ([1], [2, 3]), "dog": ([4], [5, 6])})
    [e] = load_episodes(tmp_path / "ep", prepare=prepare)
    assert e.classes == ("cat", "dog") and value(e.query_x) == [2, 3, 5, 6] and e.source == str(tmp_path / "ep")


# ---------------------------------------------------------------------------- round trip and batching


def test_index_episodes_round_trip_to_batch_from_indices(tmp_path):
    split = toy_split()
    idx = fixed_episode_indices(split, ways=3, shots=2, queries=3, episodes=9, seed=5)
    f = tmp_path / "sets" / "eps.json"
    write_index_episodes(f, idx, shots=2, dataset="toy", split="test")
    assert not list(f.parent.glob(".*.tmp")), "no temporary file left behind"
    doc = json.loads(f.read_text())
    assert doc["format"] == "metabench-episodes" and doc["version"] == 1 and doc["dataset"] == "toy"
    eps = load_episodes(f, split=split)
    assert all((e.ways, e.shots, e.queries, e.classes) == (3, 2, 3, (0, 1, 2)) for e in eps)
    [(positions, got)] = list(stack_episodes(eps))
    want = batch_from_indices(split.images, idx, 2)
    assert positions == list(range(9)) and got.ways == want.ways == 3
    for key in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(got, key), getattr(want, key)), key
    got.check("round trip", 9, 3, 2, 3, (1, 2, 2))


def test_index_episodes_with_true_labels_keep_the_images_and_name_the_classes(tmp_path):
    split = toy_split()
    idx = fixed_episode_indices(split, ways=3, shots=1, queries=2, episodes=6, seed=1)
    f = tmp_path / "eps.json"
    write_index_episodes(f, idx, shots=1, labels=split.labels)
    assert "dataset" not in json.loads(f.read_text())
    for t, e in enumerate(load_episodes(f, split=split)):
        true = split.labels[idx[t, :, 0]].tolist()
        assert e.classes == tuple(sorted(true))
        for n, lab in enumerate(true):  # class row n of the indices became label classes.index(lab)
            label = e.classes.index(lab)
            assert value(e.support_x[e.support_y == label]) == value(split.images[idx[t, n, :1]])
            assert value(e.query_x[e.query_y == label]) == value(split.images[idx[t, n, 1:]])


def test_write_index_episodes_rejects_bad_input(tmp_path):
    split = toy_split()
    idx = fixed_episode_indices(split, ways=2, shots=1, queries=1, episodes=2, seed=0)
    with pytest.raises(ValueError, match="shots"):
        write_index_episodes(tmp_path / "a.json", idx, shots=2)
    mixed = idx.clone()
    mixed[1, 0, 1] = idx[1, 1, 0]  # a row holding two classes
    with pytest.raises(ValueError, match="episode 1"):
        write_index_episodes(tmp_path / "a.json", mixed, shots=1, labels=split.labels)
    assert not (tmp_path / "a.json").exists()


def test_stack_groups_by_shape_chunks_and_keeps_positions(tmp_path):
    split = toy_split()
    one = fixed_episode_indices(split, ways=2, shots=1, queries=2, episodes=3, seed=0)
    two = fixed_episode_indices(split, ways=3, shots=2, queries=1, episodes=2, seed=0)
    write_index_episodes(tmp_path / "a.json", one, shots=1)
    write_index_episodes(tmp_path / "b.json", two, shots=2)
    a, b = load_episodes(tmp_path / "a.json", split=split), load_episodes(tmp_path / "b.json", split=split)
    eps = [a[0], b[0], a[1], b[1], a[2]]
    out = list(stack_episodes(eps, batch=2, device="cpu"))
    assert [p for p, _ in out] == [[0, 2], [4], [1, 3]]
    for positions, batch in out:
        assert batch.support_x.dtype == torch.float32 and batch.tasks == len(positions)
        for row, p in enumerate(positions):
            assert torch.equal(batch.support_x[row], to_float(eps[p].support_x))
            assert torch.equal(batch.query_y[row], eps[p].query_y) and batch.ways == eps[p].ways
    scores = torch.full((5,), -1.0)
    for positions, batch in out:
        scores[positions] = float(batch.ways)
    assert scores.tolist() == [2, 3, 2, 3, 2]


# ----------------------------------------------------------------------------------------------- errors


def _one(tmp_path: Path, support, query, **header) -> Path:
    return write_json(tmp_path / "eps.json", [{"support": support, "query": query}], **header)


def test_missing_image_names_the_file_and_the_episode(tmp_path):
    png(tmp_path / "a.png", 1)
    f = write_json(tmp_path / "eps.json", [
        {"support": [{"class": 0, "path": "a.png"}], "query": [{"class": 0, "path": "a.png"}]},
        {"support": [{"class": 0, "path": "a.png"}], "query": [{"class": 0, "path": "gone.png"}]}])
    with pytest.raises(EpisodeSetError, match=r"episode 1, query item 0: image file .*gone\.png not found"):
        load_episodes(f, prepare=prepare)


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_corrupt_image_names_the_file(tmp_path, content):
    good = png(tmp_path / "a.png", 1)
    if content == "truncated":
        content = good.read_bytes()[:40]
    (tmp_path / "bad.png").write_bytes(content)
    f = _one(tmp_path, [{"class": 0, "path": "a.png"}], [{"class": 0, "path": "bad.png"}])
    with pytest.raises(EpisodeSetError, match=r"episode 0, query item 0: cannot read image .*bad\.png"):
        load_episodes(f, prepare=prepare)


def test_corrupt_image_in_a_folder_set_names_the_file(tmp_path):
    _folder_episode(tmp_path / "ep", {"a": ([1], [2])})
    (tmp_path / "ep" / "query" / "a" / "img0.png").write_bytes(b"garbage")
    with pytest.raises(EpisodeSetError, match=r"query image .*img0\.png: cannot read image"):
        load_episodes(tmp_path / "ep", prepare=prepare)


def test_index_out_of_range_names_item_and_split(tmp_path):
    f = _one(tmp_path, [{"class": 0, "index": 0}], [{"class": 0, "index": 42}], split="val")
    with pytest.raises(EpisodeSetError, match=r"episode 0, query item 0: index 42 is out of range of split 'val' "
                                              r"\(it has 42 images"):
        load_episodes(f, split=toy_split(6, 7))


@pytest.mark.parametrize("header, match", [
    ({"format": "other-episodes", "version": 1}, "unknown format 'other-episodes'"),
    ({"version": 1}, "not a metabench episode set"),
    ({"format": "metabench-episodes", "version": 2}, "unsupported metabench-episodes version 2"),
    ({"format": "metabench-episodes", "version": True}, "unsupported metabench-episodes version True"),
    ({"format": "metabench-episodes"}, "version None"),
])
def test_unknown_format_or_version(tmp_path, header, match):
    f = tmp_path / "eps.json"
    f.write_text(json.dumps({**header, "episodes": []}))
    with pytest.raises(EpisodeSetError, match=match):
        inspect_episodes(f)


def test_malformed_json_names_file_and_position(tmp_path):
    f = tmp_path / "eps.json"
    f.write_text('{"format": "metabench-episodes",\n "version": 1,\n "episodes": [}\n')
    with pytest.raises(EpisodeSetError, match=r"eps\.json: malformed JSON at line 3 column 15"):
        load_episodes(f)


def test_query_class_absent_from_support(tmp_path):
    f = _one(tmp_path, [{"class": 1, "index": 0}, {"class": 2, "index": 1}],
             [{"class": 1, "index": 2}, {"class": 3, "index": 3}])
    with pytest.raises(EpisodeSetError, match=r"episode 0, query item 1: query class 3 is not in the support "
                                              r"\(support classes: \[1, 2\]\)"):
        load_episodes(f, split=toy_split())


def test_string_and_integer_ids_do_not_match_or_mix(tmp_path):
    f = _one(tmp_path, [{"class": 1, "index": 0}], [{"class": "1", "index": 2}])
    with pytest.raises(EpisodeSetError, match="query class '1' is not in the support"):
        load_episodes(f, split=toy_split())
    f = _one(tmp_path, [{"class": 1, "index": 0}, {"class": "a", "index": 1}], [{"class": 1, "index": 2}])
    with pytest.raises(EpisodeSetError, match="episode 0: class ids mix integers and strings"):
        load_episodes(f, split=toy_split())


def test_non_uniform_shots(tmp_path):
    f = _one(tmp_path, [{"class": "x", "index": 0}, {"class": "x", "index": 1}, {"class": "y", "index": 2}],
             [{"class": "x", "index": 3}])
    with pytest.raises(EpisodeSetError, match=r"episode 0: support classes have different numbers of shots "
                                              r"\('x': 2, 'y': 1\)"):
        load_episodes(f, split=toy_split())


def test_non_uniform_shots_in_a_folder_set(tmp_path):
    _folder_episode(tmp_path / "set" / "e0", {"a": ([1, 2], [3]), "b": ([4], [5])})
    with pytest.raises(EpisodeSetError, match=r"e0: support classes have different numbers of shots"):
        load_episodes(tmp_path / "set", prepare=prepare)


@pytest.mark.parametrize("episode, match", [
    ({"support": [], "query": [{"class": 0, "index": 0}]}, "episode 1: empty episode: its support has no images"),
    ({"support": [{"class": 0, "index": 0}], "query": []}, "episode 1: empty episode: its query has no images"),
    ({"support": [{"class": 0, "index": 0}]}, "episode 1: 'query' must be a list"),
    ({"support": [{"class": 0, "index": 0}], "query": [{"class": 0}]}, r"episode 1, query item 0: .*exactly one"),
    ({"support": [{"class": 0, "index": 0, "path": "a.png"}], "query": [{"class": 0, "index": 1}]},
     r"episode 1, support item 0: an item needs exactly one"),
    ({"support": [{"index": 0}], "query": [{"class": 0, "index": 1}]}, r"support item 0: item has no 'class'"),
    ({"support": [{"class": 0, "idx": 0}], "query": [{"class": 0, "index": 1}]}, r"unknown key\(s\) \['idx'\]"),
    ({"support": [{"class": 0.5, "index": 0}], "query": [{"class": 0, "index": 1}]}, "integer or a string"),
    ({"support": [{"class": 0, "index": -1}], "query": [{"class": 0, "index": 1}]}, "non-negative integer"),
    ({"support": [{"class": 0, "index": 0}], "query": [{"class": 0, "index": 1}], "extra": 1},
     r"episode 1: unknown key\(s\) \['extra'\]"),
])
def test_malformed_episodes_name_episode_and_item(tmp_path, episode, match):
    good = {"support": [{"class": 0, "index": 0}], "query": [{"class": 0, "index": 1}]}
    f = write_json(tmp_path / "eps.json", [good, episode])
    with pytest.raises(EpisodeSetError, match=match):
        load_episodes(f, split=toy_split())


def test_no_episodes(tmp_path):
    with pytest.raises(EpisodeSetError, match="'episodes' must be a non-empty list"):
        load_episodes(write_json(tmp_path / "eps.json", []))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EpisodeSetError, match="empty: no episodes"):
        load_episodes(tmp_path / "empty")
    with pytest.raises(EpisodeSetError, match="nowhere.json: no such episode set"):
        load_episodes(tmp_path / "nowhere.json")


def test_path_item_needs_prepare_and_index_item_needs_split(tmp_path):
    png(tmp_path / "a.png", 1)
    f = _one(tmp_path, [{"class": 0, "path": "a.png"}], [{"class": 0, "path": "a.png"}])
    with pytest.raises(EpisodeSetError, match=r"episode 0, support item 0: a path item .*a\.png.* needs prepare="):
        load_episodes(f, split=toy_split())
    f = _one(tmp_path, [{"class": 0, "index": 0}], [{"class": 0, "index": 1}], split="test")
    with pytest.raises(EpisodeSetError, match=r"episode 0, support item 0: an index item needs split= "
                                              r"\(the dataset's 'test' split\)"):
        load_episodes(f, prepare=prepare)
    _folder_episode(tmp_path / "ep", {"a": ([1], [2])})
    with pytest.raises(EpisodeSetError, match="needs prepare="):
        load_episodes(tmp_path / "ep")


def test_prepare_results_are_checked(tmp_path):
    png(tmp_path / "a.png", 1)
    png(tmp_path / "big.png", 2, size=SIZE * 2)
    f = _one(tmp_path, [{"class": 0, "path": "a.png"}], [{"class": 0, "path": "a.png"}])
    with pytest.raises(PluginError, match=r"uint8 \[C, H, W\].*a\.png.*torch.float32"):
        load_episodes(f, prepare=lambda im: prepare(im).float())
    with pytest.raises(PluginError, match="returned ndarray"):
        load_episodes(f, prepare=lambda im: np.array(im))

    def explode(im):
        raise RuntimeError("mode P not supported")

    with pytest.raises(EpisodeSetError, match=r"support item 0: prepare\(\) failed on image .*a\.png: RuntimeError"):
        load_episodes(f, prepare=explode)
    raw = lambda im: torch.from_numpy(np.array(im)).unsqueeze(0)  # no resizing  # noqa: E731
    f = _one(tmp_path, [{"class": 0, "path": "a.png"}], [{"class": 0, "path": "big.png"}])
    with pytest.raises(EpisodeSetError, match=r"big\.png: image shape \(1, 8, 8\) differs from \(1, 4, 4\)"):
        load_episodes(f, prepare=raw)
    f = _one(tmp_path, [{"class": 0, "index": 0}], [{"class": 0, "path": "a.png"}])
    with pytest.raises(EpisodeSetError, match=r"image shape \(1, 4, 4\) differs from \(1, 2, 2\) of split 'test'"):
        load_episodes(f, split=toy_split(), prepare=prepare)


@pytest.mark.parametrize("fault, match", [
    ("stray_file", r"a file directly in support/"),
    ("not_image", r"notes\.txt: not an image file in class folder"),
    ("subfolder", r"deeper: a folder in class folder"),
    ("empty_class", r"b: empty class folder in episode"),
    ("no_query", r"e1: not an episode folder \(it has no query/\)"),
    ("query_only_class", r"query class 'c' is not in the support"),
    ("same_int", r"support class folders '01' and '1' are both class 1"),
])
def test_folder_faults_name_the_culprit(tmp_path, fault, match):
    root = tmp_path / "set"
    _folder_episode(root / "e0", {"a": ([1], [2]), "b": ([3], [4])})
    _folder_episode(root / "e1", {"a": ([1], [2]), "b": ([3], [4])})
    ep = root / "e1"
    if fault == "stray_file":
        png(ep / "support" / "loose.png", 5)
    elif fault == "not_image":
        (ep / "support" / "a" / "notes.txt").write_text("x")
    elif fault == "subfolder":
        png(ep / "support" / "a" / "deeper" / "x.png", 5)
    elif fault == "empty_class":
        for p in (ep / "query" / "b").iterdir():
            p.unlink()
    elif fault == "no_query":
        import shutil
        shutil.rmtree(ep / "query")
    elif fault == "query_only_class":
        png(ep / "query" / "c" / "x.png", 5)
    elif fault == "same_int":
        import shutil
        shutil.rmtree(ep)
        _folder_episode(ep, {"1": ([1], [2]), "01": ([3], [4])})
    with pytest.raises(EpisodeSetError, match=match):
        load_episodes(root, prepare=prepare)
