"""Cheats and vandals, as a stranger would write them: a ``--plugins-dir`` file (tests copy it there).

Five unsupervised task generators that get the meta-training labels they must not see, each its own way,
and then make perfectly supervised tasks from them; each raises when it finds no labels (a cheat that
needs them). Two algorithms that vandalise: one deletes every record under ``$CHEAT_RESULTS``, one writes
into ``$CHEAT_DATA_ROOT`` (the paths a vandal would guess or find; tests give them). One algorithm that
reads the episodes it is scored on (``metabench evaluate``).
"""
from __future__ import annotations

import gc
import gzip
import os
import sys
from pathlib import Path

import numpy as np
import torch

from metabench import EpisodeBatch, PluginError, TaskGenerator, hookimpl
from metabench.toolkit.episodes import EpisodeSampler
from metabench_plugins.algorithms.protonet import ProtoNet


def _match(images: torch.Tensor, source_images: torch.Tensor, source_labels: torch.Tensor) -> torch.Tensor | None:
    """The labels of ``images`` looked up by content in a labeled source, or None if any is missing."""
    rows = lambda t: t.cpu().contiguous().numpy().reshape(t.shape[0], -1)  # noqa: E731
    table = {x.tobytes(): int(y) for x, y in zip(rows(source_images), source_labels.cpu().tolist())}
    found = [table.get(x.tobytes()) for x in rows(images)]
    if not found or any(f is None for f in found):
        return None
    return torch.tensor(found, dtype=torch.int64, device=images.device)


class _LabelThief(TaskGenerator):
    """Finds the labels (:meth:`steal`), then samples supervised tasks as the oracle does."""

    def setup(self, data, ctx):
        labels = self.steal(data.images, ctx)
        if labels is None:
            raise PluginError(f"{self.name}: found no labels to steal")
        self.sampler = EpisodeSampler(data.images, labels, ctx.ways, ctx.shots, ctx.queries)

    def sample(self, tasks: int, generator: torch.Generator) -> EpisodeBatch:
        return self.sampler.sample(tasks, generator)

    def steal(self, images, ctx):
        raise NotImplementedError


class GcSearch(_LabelThief):
    """Searches the garbage collector for the labeled split its images came from."""

    name = "cheat_gc"

    def steal(self, images, ctx):
        for obj in gc.get_objects():
            labels = getattr(obj, "labels", None) if type(obj).__name__ in ("LabeledSplit", "ImageSet") else None
            if isinstance(labels, torch.Tensor):
                source = obj.images
                if source is images or (source.shape == images.shape and torch.equal(source, images)):
                    return labels
                found = _match(images, source, labels) if source.shape[1:] == images.shape[1:] else None
                if found is not None:
                    return found
        return None


class FrameWalk(_LabelThief):
    """Walks up the caller's frames for a local holding the labeled split."""

    name = "cheat_frames"

    def steal(self, images, ctx):
        frame = sys._getframe(1)
        while frame is not None:
            for value in list(frame.f_locals.values()):
                labels = getattr(value, "labels", None)
                if isinstance(labels, torch.Tensor) and getattr(value, "images", None) is not None \
                        and value.images.shape[1:] == images.shape[1:]:
                    found = _match(images, value.images, labels)
                    if found is not None:
                        return found
            frame = frame.f_back
        return None


def _data_context(ctx):
    from metabench.contracts import DataContext
    from metabench.engine.paths import default_cache_dir, default_data_root

    return DataContext(Path(os.environ.get("CHEAT_DATA_ROOT") or default_data_root()), default_cache_dir(), {})


class RegistryReload(_LabelThief):
    """Loads its dataset again through metabench's own registry."""

    name = "cheat_registry"

    def steal(self, images, ctx):
        from metabench.engine.registry import discover

        cls = discover().get("dataset", ctx.dataset).cls
        data = cls().load(_data_context(ctx))
        return _match(images, data.images, data.labels)


class FileReader(_LabelThief):
    """Reads the dataset's files itself: the digits bundled with scikit-learn, MNIST's idx files."""

    name = "cheat_files"

    def steal(self, images, ctx):
        if ctx.dataset == "digits":
            import sklearn.datasets

            path = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
            raw = np.loadtxt(path, delimiter=",")
            source = torch.round(torch.from_numpy(raw[:, :-1]) * 255 / 16).to(torch.uint8).view(-1, 1, 8, 8)
            return _match(images, source, torch.from_numpy(raw[:, -1]).long())
        root = _data_context(ctx).data_root / "MNIST" / "raw"

        def idx(name):
            path = root / name
            data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
            return data

        img = idx("train-images-idx3-ubyte.gz" if (root / "train-images-idx3-ubyte.gz").exists()
                  else "train-images-idx3-ubyte")
        lab = idx("train-labels-idx1-ubyte.gz" if (root / "train-labels-idx1-ubyte.gz").exists()
                  else "train-labels-idx1-ubyte")
        source = torch.frombuffer(bytearray(img[16:]), dtype=torch.uint8).view(-1, 1, 28, 28)
        return _match(images, source, torch.frombuffer(bytearray(lab[8:]), dtype=torch.uint8).long())


class CacheReader(_LabelThief):
    """Reads the decoded tensors other runs left in the cache folder."""

    name = "cheat_cache"

    def steal(self, images, ctx):
        roots = {Path(_data_context(ctx).cache_dir)}
        if ctx.cache_dir is not None:
            roots |= {Path(ctx.cache_dir), Path(ctx.cache_dir).parent}
        for root in roots:
            for path in sorted(root.glob("*.pt")):
                data = torch.load(path, weights_only=True)
                if isinstance(data, dict) and "labels" in data and "images" in data:
                    found = _match(images, data["images"], data["labels"])
                    if found is not None:
                        return found
        return None


class RecordEraser(ProtoNet):
    """Deletes every record it can find (under ``$CHEAT_RESULTS``), then trains as ProtoNet."""

    name = "vandal_eraser"

    def setup(self, ctx):
        super().setup(ctx)
        for path in Path(os.environ["CHEAT_RESULTS"]).rglob("*.json"):
            path.unlink()


class DataScribbler(ProtoNet):
    """Writes a file into the data root (``$CHEAT_DATA_ROOT``), then trains as ProtoNet."""

    name = "vandal_scribbler"

    def setup(self, ctx):
        super().setup(ctx)
        (Path(os.environ["CHEAT_DATA_ROOT"]) / "scribbled.txt").write_text("was here\n")


class EpisodePeeker(ProtoNet):
    """ProtoNet that, when scored, reads the episode set it is scored on (``$CHEAT_EPISODES``: its files
    hold the query labels); it swallows a refusal and predicts honestly, as a careful cheat would."""

    name = "cheat_peek"

    def predict(self, support_x, support_y, query_x, ways):
        where = os.environ.get("CHEAT_EPISODES")
        if where:
            try:
                self.peeked = Path(where).read_bytes()[:100]
            except OSError:
                pass
        return super().predict(support_x, support_y, query_x, ways)


CHEATS = ["cheat_gc", "cheat_frames", "cheat_registry", "cheat_files", "cheat_cache"]
VANDALS = ["vandal_eraser", "vandal_scribbler"]
SCORING_CHEATS = ["cheat_peek"]


@hookimpl
def metabench_task_generators():
    return [GcSearch, FrameWalk, RegistryReload, FileReader, CacheReader]


@hookimpl
def metabench_algorithms():
    return [RecordEraser, DataScribbler, EpisodePeeker]
