"""``metabench new-plugin KIND NAME``: a ready-to-edit plugin package that passes ``check-plugin`` as written.

It writes ``DIR/metabench-NAME/`` with ``pyproject.toml`` (the module under the ``metabench`` entry-point
group), ``metabench_NAME/__init__.py`` (a simple working plugin of that kind: a synthetic dataset, an
unsupervised random-projection task generator, or nearest class mean on pixels), ``tests/test_conformance.py``
(the conformance battery) and a ``README.md`` with the steps from here to a leaderboard row.
"""
from __future__ import annotations

import re
from pathlib import Path
from string import Template

KIND_HOOKS = {"dataset": "metabench_datasets", "task_generator": "metabench_task_generators",
              "algorithm": "metabench_algorithms"}
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class ScaffoldError(ValueError):
    """The package cannot be written as asked; the message says why."""


PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "metabench-$dash"
version = "0.1.0"
description = "$kind_words plugin '$name' for metabench"
readme = "README.md"
requires-python = ">=3.10"
# metabench itself (and torch) must be installed first: pip install -e /path/to/metabench
dependencies = []

[project.optional-dependencies]
test = ["pytest>=7"]

# This line is what makes metabench find the plugin once the package is installed.
[project.entry-points.metabench]
$name = "metabench_$name"

[tool.setuptools]
packages = ["metabench_$name"]
''')

DATASET = Template('''\
"""$name: a tiny synthetic dataset, made by `metabench new-plugin` (edit me).

Each class is a random binary pattern; its images are noisy copies. Split by class: the first 3/5 of the
classes for meta-training (``train``), the rest for testing (``test``). A real dataset reads its files
from ``ctx.data_root``, raises ``DatasetNotFoundError`` naming the paths it looked at when they are absent
(never downloads unasked), and may cache decoded tensors under ``ctx.cache_dir``.
"""
from __future__ import annotations

import torch

from metabench import DataContext, Dataset, ImageSet, hookimpl


class $cls(Dataset):
    """Synthetic patterns: a few hundred 8x8 images, split by class."""

    name = "$name"
    description = "Synthetic binary patterns with noise (template: replace with your dataset)"
    paper = ""  # where the data comes from, to cite
    defaults = {"classes": 20, "per_class": 20, "size": 8, "seed": 0}  # [options.$name] in a suite

    def load(self, ctx: DataContext) -> ImageSet:
        """Make the images (uint8 [N, C, H, W]), labels (int64 [N]) and disjoint splits (int64 indices)."""
        o = ctx.options
        classes, per_class, size = int(o["classes"]), int(o["per_class"]), int(o["size"])
        g = torch.Generator().manual_seed(int(o["seed"]))  # fixed: the data are part of the protocol
        patterns = (torch.rand(classes, 1, 1, size, size, generator=g) > 0.6).float()
        noise = torch.rand(classes, per_class, 1, size, size, generator=g)
        pixels = (0.7 * patterns + 0.4 * noise).clamp(0, 1)
        images = (pixels * 255).round().to(torch.uint8).flatten(0, 1)
        labels = torch.arange(classes).repeat_interleave(per_class)
        cut = classes * 3 // 5
        splits = {"train": (labels < cut).nonzero().squeeze(1), "test": (labels >= cut).nonzero().squeeze(1)}
        return ImageSet(self.name, images, labels, splits, protocol="split by class")


@hookimpl
def metabench_datasets():
    return [$cls]
''')

TASK_GENERATOR = Template('''\
"""$name: an unsupervised task generator, made by `metabench new-plugin` (edit me).

Pseudo-classes from a random projection of the pixels: the images are sorted along a random direction and
cut into ``clusters`` equal bins; a task draws N bins as its N classes. It never sees a label: with
``uses_labels = False`` metabench hands ``setup`` an ``UnlabeledSplit`` (images only). Every random choice
comes from ``ctx.generator(...)`` (setup) or the ``generator`` given to ``sample``, so runs are reproducible.
"""
from __future__ import annotations

import torch

from metabench import EpisodeBatch, RunContext, TaskGenerator, UnlabeledSplit, hookimpl
from metabench.toolkit.episodes import EpisodeSampler


class $cls(TaskGenerator):
    """N random-projection bins of unlabeled images as the N classes of a task."""

    name = "$name"
    description = "Unsupervised tasks from random-projection bins of the pixels (template: replace)"
    paper = ""  # the paper to cite
    uses_labels = False  # True only for a supervised generator: setup() then gets a LabeledSplit
    defaults = {"clusters": 40}  # [options.$name] in a suite

    def setup(self, data: UnlabeledSplit, ctx: RunContext) -> None:
        """Assign each meta-training image a pseudo-class (images are uint8 [M, C, H, W] on ctx.device)."""
        x = data.images.flatten(1).float() / 255
        direction = torch.randn(x.shape[1], generator=ctx.generator("projection"), device=x.device)
        order = (x @ direction).argsort()
        clusters = int(ctx.options["clusters"])
        pseudo = torch.empty(len(order), dtype=torch.int64, device=x.device)
        pseudo[order] = torch.arange(len(order), device=x.device) * clusters // len(order)
        self.sampler = EpisodeSampler(data.images, pseudo, ctx.ways, ctx.shots, ctx.queries)

    def sample(self, tasks: int, generator: torch.Generator) -> EpisodeBatch:
        """``tasks`` tasks: support [T, N*K, C, H, W] float in [0, 1], labels [T, N*K] in 0..N-1, queries."""
        return self.sampler.sample(tasks, generator)


@hookimpl
def metabench_task_generators():
    return [$cls]
''')

ALGORITHM = Template('''\
"""$name: nearest class mean on raw pixels, made by `metabench new-plugin` (edit me).

Replace the method bodies with your method and keep the signatures; `metabench check-plugin $name` says
whether the plugin still honours the contract. Build models in ``setup`` on ``ctx.device`` and draw random
initial weights from ``ctx.generator("init")`` (or ``metabench.seeding.seeded``), so runs are reproducible.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from metabench import Algorithm, EpisodeBatch, RunContext, hookimpl


class $cls(Algorithm):
    """Nearest class mean on raw pixels: no meta-learning at all."""

    name = "$name"
    description = "Nearest class mean on raw pixels (template: replace with your method)"
    paper = ""  # the paper to cite
    defaults = {"temperature": 1.0}  # [options.$name] in a suite; unknown keys there are an error

    def setup(self, ctx: RunContext) -> None:
        """Build the model (ctx.device, ctx.image_shape, ctx.options, ctx.unlabeled images, ...)."""
        self.temperature = float(ctx.options["temperature"])

    def train_step(self, batch: EpisodeBatch, step: int) -> float:
        """One outer update on a meta-batch (support_x [T, N*K, C, H, W], ...); return the finite loss."""
        logits = self.predict(batch.support_x, batch.support_y, batch.query_x, batch.ways)
        return float(F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()))

    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                ways: int) -> torch.Tensor:
        """Query logits [T, N*Q, ways] after adapting to each task's support set."""
        onehot = F.one_hot(support_y, ways).to(support_x.dtype)                     # [T, N*K, N]
        protos = onehot.transpose(1, 2) @ support_x.flatten(2) / onehot.sum(1).unsqueeze(-1)
        return -torch.cdist(query_x.flatten(2), protos) / self.temperature

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features [M, D] of images [M, C, H, W] (for the clustering evaluation)."""
        return x.flatten(1)


@hookimpl
def metabench_algorithms():
    return [$cls]
''')

TEST = Template('''\
"""metabench's conformance battery on this plugin (python -m pytest, once the package is installed)."""
from metabench.checks.conformance import check_plugin, failures


def test_${name}_passes_check_plugin():
    results = check_plugin("$name", "$kind")
    bad = failures(results)
    assert not bad, "\\n".join(f"{r.check}: {r.message}" for r in bad)
''')

README = Template('''\
# metabench-$dash

A $kind_words plugin for metabench, made by `metabench new-plugin $kind $name`.

1. **Install** (metabench first, then this package, editable):
   `pip install -e /path/to/metabench` and `pip install -e .`; `metabench list` now shows `$name`.
2. **Edit** `metabench_$name/__init__.py`. Options a suite may set go in `defaults`.
3. **Check**: `metabench check-plugin $name` (or `python -m pytest`) runs the conformance battery: the
   contract, shapes and dtypes, determinism under a seed, label isolation for unsupervised generators,
   picklability, and a smoke run of a tiny suite in a fresh worker process. Fix what it reports.
4. **Run** a suite that names `$name`, e.g. a copy of metabench's `suites/default.toml` with `$name` added
   to `$list_key`: `metabench run my-suite.toml` (add `--executor process --workers N` to go faster).
5. **Leaderboard**: `metabench leaderboard` turns the records under `results/` into the tables; open a
   pull request with your package (or its entry point), the suite file and the records.
''')

TEMPLATES = {"dataset": DATASET, "task_generator": TASK_GENERATOR, "algorithm": ALGORITHM}
LIST_KEYS = {"dataset": "datasets", "task_generator": "task_generators", "algorithm": "algorithms"}


def class_name(name: str) -> str:
    """``my_plugin`` -> ``MyPlugin``."""
    return "".join(part.capitalize() for part in name.split("_") if part) or "Plugin"


def render(kind: str, name: str) -> dict[str, str]:
    """The package's files (relative path -> text) for plugin ``name`` of ``kind``."""
    if kind not in TEMPLATES:
        raise ScaffoldError(f"unknown kind {kind!r}; choose one of {', '.join(TEMPLATES)}")
    if not NAME_RE.match(name):
        raise ScaffoldError(f"plugin name {name!r} must be lower case letters, digits and _, starting with a "
                            "letter (it becomes the module metabench_<name>)")
    values = {"name": name, "dash": name.replace("_", "-"), "cls": class_name(name), "kind": kind,
              "kind_words": kind.replace("_", " "), "list_key": LIST_KEYS[kind]}
    return {
        "pyproject.toml": PYPROJECT.substitute(values),
        f"metabench_{name}/__init__.py": TEMPLATES[kind].substitute(values),
        "tests/test_conformance.py": TEST.substitute(values),
        "README.md": README.substitute(values),
    }


def new_plugin(kind: str, name: str, directory: Path = Path("."), check_clash: bool = True) -> Path:
    """Write the package ``directory/metabench-NAME/`` and return its path; refuses to overwrite, and (with
    ``check_clash``) refuses a name an installed plugin of that kind already has."""
    files = render(kind, name)
    root = Path(directory) / f"metabench-{name}"
    if root.exists():
        raise ScaffoldError(f"{root} exists already; choose another name or --dir")
    if check_clash:
        from metabench.engine.registry import discover

        have = discover().plugins[kind].get(name)
        if have is not None:
            raise ScaffoldError(f"a {kind.replace('_', ' ')} plugin named {name!r} exists already (from "
                                f"{have.origin}); choose another name")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
