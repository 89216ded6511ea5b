"""Provenance: digests of a run's data and plugin code, stale records re-run and marked."""
from __future__ import annotations

import textwrap

import pytest
import torch

from metabench.contracts import ImageSet
from metabench.engine import provenance
from metabench.engine.registry import discover


def _imageset(images=None) -> ImageSet:
    images = torch.arange(6 * 4, dtype=torch.uint8).view(6, 1, 2, 2) if images is None else images
    return ImageSet("toy", images, torch.tensor([0, 0, 1, 1, 2, 2]),
                    {"train": torch.tensor([0, 1, 2, 3]), "test": torch.tensor([4, 5])})


def test_data_digest_sees_images_labels_and_splits_and_nothing_else():
    base = provenance.data_digest(_imageset())
    assert base == provenance.data_digest(_imageset()) and len(base) == 64
    pixel = _imageset()
    pixel.images[3, 0, 1, 1] += 1
    label = _imageset()
    label.labels[5] = 0
    split = _imageset()
    split.splits["train"] = torch.tensor([0, 1, 2, 4])
    renamed = ImageSet("other-name", *(lambda d: (d.images, d.labels, d.splits))(_imageset()))
    assert len({base, *map(provenance.data_digest, (pixel, label, split))}) == 4
    assert provenance.data_digest(renamed) == base


def _plugin_file(folder, body: str):
    folder.mkdir(exist_ok=True)
    (folder / "mine.py").write_text(textwrap.dedent(body))
    return discover([folder]).get("algorithm", "mine").cls


MINE = """
    from metabench import hookimpl
    from metabench_plugins.algorithms.protonet import ProtoNet

    class Mine(ProtoNet):
        name = "mine"
        def scale(self):
            return {scale}

    @hookimpl
    def metabench_algorithms():
        return [Mine]
"""


def test_code_digest_follows_the_plugin_its_bases_and_the_toolkit_not_the_engine(tmp_path):
    cls = _plugin_file(tmp_path / "a", MINE.format(scale=1))
    mods = provenance.code_modules(cls)
    assert "metabench_userplugin_mine" in mods and "metabench_plugins.algorithms.protonet" in mods
    assert "metabench.toolkit.nets" in mods  # ProtoNet's Conv-4
    assert not [m for m in mods if m.startswith(("metabench.engine", "metabench.contracts"))]
    same = _plugin_file(tmp_path / "b", MINE.format(scale=1))   # same source, another folder
    other = _plugin_file(tmp_path / "c", MINE.format(scale=2))
    assert provenance.plugin_code_digest(cls) == provenance.plugin_code_digest(same)
    assert provenance.plugin_code_digest(cls) != provenance.plugin_code_digest(other)
