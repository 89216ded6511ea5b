"""The three plugin contracts (dataset, task generator, algorithm) and the values they exchange.

Plugins subclass :class:`Dataset`, :class:`TaskGenerator` or :class:`Algorithm` and hand the classes to
metabench through the hooks in :mod:`metabench.hookspecs`. The runner instantiates them once per run.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:  # only for annotations: PIL comes with torchvision
    import PIL.Image

KINDS = ("dataset", "task_generator", "algorithm")


class PluginError(Exception):
    """A plugin broke its contract (bad output, bad option); the message names the plugin."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are absent; the message says where metabench looked and how to provide them."""


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ImageSet:
    """A whole dataset in memory.

    ``images`` is uint8 ``[N, C, H, W]`` (foreground bright, background 0), ``labels`` int64 ``[N]``, and
    ``splits`` maps a split name (``train``, ``val``, ``test``) to the int64 indices of its images. Splits
    are disjoint; most few-shot protocols split by class, MNIST's CACTUs protocol by image.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    splits: dict[str, torch.Tensor]
    protocol: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise PluginError(f"dataset {self.name!r}: images must be uint8 [N, C, H, W], got "
                              f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise PluginError(f"dataset {self.name!r}: labels must be [N] = [{self.images.shape[0]}], "
                              f"got {tuple(self.labels.shape)}")
        for split, idx in self.splits.items():
            if idx.dtype != torch.int64 or idx.dim() != 1:
                raise PluginError(f"dataset {self.name!r}: split {split!r} must be int64 indices [M]")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def split(self, name: str) -> "LabeledSplit":
        """The images and labels of one split, with labels kept as in the full set."""
        if name not in self.splits:
            raise PluginError(f"dataset {self.name!r} has no split {name!r} (it has {sorted(self.splits)})")
        idx = self.splits[name]
        return LabeledSplit(self.images[idx], self.labels[idx])


@dataclass(frozen=True)
class LabeledSplit:
    """Images ``[M, C, H, W]`` uint8 and their class labels ``[M]``. Only the oracle generator gets one."""

    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> "LabeledSplit":
        """The same split on ``device``."""
        return LabeledSplit(self.images.to(device), self.labels.to(device))

    def unlabeled(self) -> "UnlabeledSplit":
        """The label-free view handed to unsupervised task generators and self-supervised learners."""
        return UnlabeledSplit(self.images)


class UnlabeledSplit:
    """Images only. There is deliberately no attribute through which labels could be reached."""

    __slots__ = ("_images",)

    def __init__(self, images: torch.Tensor) -> None:
        self._images = images

    @property
    def images(self) -> torch.Tensor:
        """uint8 ``[M, C, H, W]``."""
        return self._images

    def __len__(self) -> int:
        return self._images.shape[0]

    def to(self, device: torch.device | str) -> "UnlabeledSplit":
        """The same images on ``device``."""
        return UnlabeledSplit(self._images.to(device))


@dataclass
class EpisodeBatch:
    """A meta-batch of ``T`` few-shot tasks, N-way, K support and Q query images per class.

    Images are float in [0, 1] on the run's device: ``support_x`` ``[T, N*K, C, H, W]``, ``support_y``
    ``[T, N*K]`` with values in ``0..N-1``; ``query_x`` ``[T, N*Q, C, H, W]``, ``query_y`` ``[T, N*Q]``.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int

    @property
    def tasks(self) -> int:
        """Number of tasks ``T`` in the batch."""
        return self.support_x.shape[0]

    def check(self, who: str, tasks: int, ways: int, shots: int, queries: int,
              image_shape: tuple[int, ...]) -> "EpisodeBatch":
        """Raise :class:`PluginError` naming ``who`` unless every tensor has the promised shape and dtype."""
        want = {
            "support_x": (tasks, ways * shots, *image_shape),
            "support_y": (tasks, ways * shots),
            "query_x": (tasks, ways * queries, *image_shape),
            "query_y": (tasks, ways * queries),
        }
        for key, shape in want.items():
            t = getattr(self, key)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise PluginError(f"{who}: {key} should have shape {shape}, got {got}")
        for key in ("support_x", "query_x"):
            if not getattr(self, key).is_floating_point():
                raise PluginError(f"{who}: {key} must be a float tensor")
        for key in ("support_y", "query_y"):
            y = getattr(self, key)
            if y.dtype != torch.int64 or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= ways)):
                raise PluginError(f"{who}: {key} must be int64 labels in 0..{ways - 1}")
        return self


# ------------------------------------------------------------------------------------------ contexts


@dataclass
class RunContext:
    """What a plugin may know about the run it serves."""

    device: torch.device
    seed: int
    ways: int
    shots: int
    queries: int
    image_shape: tuple[int, int, int]
    options: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None
    unlabeled: "UnlabeledSplit | None" = None  # the meta-training images, for algorithms that pre-train on them
    dataset: str = ""  # the dataset's name
    augmentation: str = ""  # the augmentation profile the dataset plugin declares (``Dataset.augmentation``)

    def generator(self, purpose: str) -> torch.Generator:
        """A fresh ``torch.Generator`` on the run's device, seeded from the run seed and ``purpose``."""
        from metabench.seeding import derive_seed, make_generator

        return make_generator(derive_seed(self.seed, purpose), self.device)


@dataclass
class DataContext:
    """Where a dataset plugin reads from (``data_root``) and may cache decoded tensors (``cache_dir``)."""

    data_root: Path
    cache_dir: Path
    options: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- plugins


class _Plugin:
    """Common surface: a unique ``name``, a one-line ``description``, a ``paper`` to cite, ``defaults``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    #: Options under which this plugin is a quick reference partner for checking *other* plugins
    #: (``metabench check-plugin``'s checks and smoke run); ``None``: not a partner. Read from the class
    #: itself, never inherited.
    smoke_partner: ClassVar[dict[str, Any] | None] = None
    #: Options ``metabench check-plugin`` uses for this plugin's own checks when given none (a plugin that
    #: trains for minutes at its defaults names a short training here); ``--option`` replaces them all.
    check_options: ClassVar[dict[str, Any]] = {}

    @classmethod
    def resolve_options(cls, given: dict[str, Any] | None) -> dict[str, Any]:
        """``defaults`` updated with ``given``; an unknown key is a :class:`PluginError`."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(cls.defaults))
        if unknown:
            raise PluginError(f"{cls.name}: unknown option(s) {unknown}; known: {sorted(cls.defaults)}")
        return {**cls.defaults, **given}


class Dataset(_Plugin, ABC):
    """A source of images with labels and splits. Must not download anything unless asked to.

    ``augmentation``: the augmentation profile (a name in :data:`metabench.toolkit.augment.PROFILES`) suited
    to its images, which generators and algorithms with ``augmentation = "auto"`` use (``""``: chosen
    from the image shape).
    """

    augmentation: ClassVar[str] = ""

    @abstractmethod
    def load(self, ctx: DataContext) -> ImageSet:
        """Decode (or read from ``ctx.cache_dir``) and return the whole dataset."""

    def prepare_image(self, image: PIL.Image.Image, options: dict[str, Any]) -> torch.Tensor:
        """Optional: one external image (e.g. a file of an episode to score a trained model on) -> uint8
        ``[C, H, W]``, prepared exactly as :meth:`load` prepares the dataset's own images (same decoding,
        resizing, inversion, channel layout), under the resolved ``options``. The default raises
        :class:`PluginError`: the plugin cannot prepare external images."""
        raise PluginError(f"dataset {self.name!r}: this dataset plugin cannot prepare external images "
                          f"(it does not implement prepare_image)")


class TaskGenerator(_Plugin, ABC):
    """Turns the meta-training split into a stream of meta-batches of tasks.

    ``uses_labels = False`` (the default) marks an unsupervised generator: its :meth:`setup` receives an
    :class:`UnlabeledSplit`. Only generators that set ``uses_labels = True`` receive a :class:`LabeledSplit`.
    """

    uses_labels: ClassVar[bool] = False
    #: ``False`` for a generator that makes no tasks (for algorithms that learn from ``ctx.unlabeled``
    #: alone); the conformance battery then does not sample from it.
    gives_tasks: ClassVar[bool] = True

    @abstractmethod
    def setup(self, data: LabeledSplit | UnlabeledSplit, ctx: RunContext) -> None:
        """Prepare to generate tasks from ``data`` (already on ``ctx.device``)."""

    @abstractmethod
    def sample(self, tasks: int, generator: torch.Generator) -> EpisodeBatch:
        """One meta-batch of ``tasks`` tasks of the context's ways/shots/queries, drawn with ``generator``."""


@dataclass(frozen=True)
class Budget:
    """How much meta-training a run gets: ``steps`` outer steps of ``meta_batch`` tasks each; ``start``:
    the first step to run (a run resumed from a checkpoint starts past 0)."""

    steps: int
    meta_batch: int
    start: int = 0


class Algorithm(_Plugin, ABC):
    """A meta-learner. Reads only what it is handed: meta-batches to learn from, support sets to adapt to.

    ``resumable = True`` declares that a run of it can stop after any step and resume from a checkpoint:
    :meth:`meta_train` starts at ``budget.start``, and :meth:`state_dict` / :meth:`load_state_dict`
    capture all that training changes (the defaults find modules, optimisers, schedulers, generators,
    tensors, dicts of tensors and plain numbers among the attributes; see :mod:`metabench.state`).
    """

    resumable = False
    #: ``False`` for an algorithm that learns from ``ctx.unlabeled`` alone and can run with a task generator
    #: that gives no tasks (``gives_tasks = False``).
    needs_tasks: ClassVar[bool] = True
    #: ``True`` for an algorithm whose model is sized by the way count (MAML's N-way head): a suite protocol
    #: that trains once and tests several protocols trains it once per test way count instead.
    trains_per_way: ClassVar[bool] = False

    def state_dict(self) -> dict[str, Any]:
        """The training state to checkpoint (a dict of tensors, numbers, strings, lists and dicts)."""
        from metabench.state import algorithm_state

        return algorithm_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into this freshly set-up algorithm."""
        from metabench.state import load_algorithm_state

        load_algorithm_state(self, state)

    @abstractmethod
    def setup(self, ctx: RunContext) -> None:
        """Build the model on ``ctx.device``; initialise from ``ctx.generator('init')``."""

    @abstractmethod
    def train_step(self, batch: EpisodeBatch, step: int) -> float:
        """One outer update on a meta-batch; returns the (finite) meta-training loss."""

    @abstractmethod
    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                ways: int) -> torch.Tensor:
        """Query logits ``[T, N*Q, ways]`` after adapting to each task's support set."""

    @abstractmethod
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[M, D]`` of images ``[M, C, H, W]`` (used for clustering evaluation)."""

    def cluster(self, x: torch.Tensor, k: int) -> torch.Tensor | None:
        """Optional: the algorithm's own clustering of unlabeled tasks (a meta-learned clusterer, e.g.
        Meta-GMVAE's EM): images ``x`` float ``[T, M, C, H, W]`` -> cluster ids int64 ``[T, M]`` in
        ``0..k-1``. Not overriding it (the default returns None) means the algorithm has none; the
        clustering evaluation then scores only k-means on :meth:`embed`, as for every algorithm."""
        return None

    @classmethod
    def has_own_clustering(cls) -> bool:
        """Whether the class overrides :meth:`cluster`."""
        return cls.cluster is not Algorithm.cluster

    def meta_train(self, stream: Iterator[EpisodeBatch], budget: Budget,
                   on_step: Any = None) -> list[float]:
        """Run :meth:`train_step` for steps ``budget.start`` to ``budget.steps - 1``; override for other
        training schemes. A non-finite loss stops training with a :class:`PluginError`.
        """
        losses = []
        for step in range(budget.start, budget.steps):
            loss = float(self.train_step(next(stream), step))
            if not math.isfinite(loss):
                raise PluginError(f"{self.name}: non-finite meta-training loss {loss} at step {step}")
            losses.append(loss)
            if on_step is not None:
                on_step(step, loss)
        return losses
