"""The sealed isolation check of ``check-plugin``: a plugin must behave the same whether or not it could
reach what it must not see.

A synthetic dataset is drawn from a secret made fresh for each check (``secrets``; never written
anywhere): its class prototypes, which image belongs to which class, and the noise. The plugin's tiny
smoke suite (:func:`metabench.checks.conformance.smoke_suite`) runs on it twice: sealed
(:mod:`metabench.engine.sealed`), where the worker holds the training images only (a supervised partner:
their labels), never a query label, and sees no data root, no cache, no results (nor ``./results``) and
none of the reference dataset's own files; then, if that passed, in this process, where the labels lie in
memory (reachable by a garbage-collector search or a walk up the caller's frames, as in an unsealed run). An honest plugin gives bit-identical numbers both
ways. A plugin that reads labels it should not gets other numbers; one that reaches for the dataset's
files, the decoded-tensor cache or a dataset plugin through the registry breaks the seal (a violation)
and its sealed run fails.
"""
from __future__ import annotations

import secrets
import tempfile
from pathlib import Path
from typing import Any

import torch

from metabench.contracts import ImageSet
from metabench.engine.registry import Registry
from metabench.engine.runner import Settings, SuiteRunner
from metabench.engine.suite import parse_suite
from metabench.execution.executors import LocalExecutor, run_suite

# 288 training images: enough for the learners that sample large unlabeled sets (Meta-GMVAE's sets of 200)
CLASSES, PER_CLASS, TRAIN_PER_CLASS = 12, 32, 24


def secret_dataset(name: str, image_shape: tuple[int, int, int]) -> ImageSet:
    """A dataset whose whole class structure comes from a fresh secret: ``CLASSES`` random prototypes,
    ``PER_CLASS`` noisy copies each, images shuffled, split by image (``TRAIN_PER_CLASS`` per class train)."""
    g = torch.Generator().manual_seed(secrets.randbits(63))
    c, h, w = image_shape
    protos = (torch.rand(CLASSES, c, h, w, generator=g) < 0.35).to(torch.float32)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    noise = torch.rand(labels.numel(), c, h, w, generator=g)
    images = ((protos[labels] * 0.75 + noise * 0.25) * 255).round().clamp(0, 255).to(torch.uint8)
    order = torch.randperm(labels.numel(), generator=g)
    images, labels = images[order], labels[order]
    train, test = [], []
    for k in range(CLASSES):
        idx = (labels == k).nonzero().squeeze(1)
        train.append(idx[:TRAIN_PER_CLASS])
        test.append(idx[TRAIN_PER_CLASS:])
    return ImageSet(name, images, labels, {"train": torch.cat(train).sort().values,
                                           "test": torch.cat(test).sort().values}, protocol="sealed-check")


class _SecretRunner(SuiteRunner):
    """A runner whose every dataset is the secret one (held in memory only); ``files``: the reference
    dataset's own source files, hidden from the sealed worker as a real run hides them."""

    def __init__(self, suite: Any, registry: Registry, settings: Settings, data: ImageSet,
                 files: list[str]) -> None:
        self._secret, self._files = data, files
        super().__init__(suite, registry, settings)

    def _dataset(self, name: str, options: dict[str, Any]) -> ImageSet:
        self._data_files = list(self._files)
        return self._secret


def numbers(record: dict[str, Any]) -> list[Any]:
    """What must be bit-identical sealed and unsealed: the final training loss and every evaluation's metrics
    (JSON-safe: a confined check compares them across processes)."""
    return [record.get("final_train_loss"), [e["metrics"] for e in record["evaluations"]]]


def secret_run(suite_data: dict[str, Any], registry: Registry, data: ImageSet, files: list[str],
               data_root: Path, cache_dir: Path, seal: bool) -> tuple[dict[str, Any] | None, str | None]:
    """The smoke suite on the secret ``data``, sealed or in this process: ``(record, None)`` if it ran
    ``ok`` (sealed when asked), else ``(None, what went wrong)``."""
    suite = parse_suite(dict(suite_data), suite_data["name"])
    with tempfile.TemporaryDirectory(prefix="metabench-sealed-check-") as tmp:
        settings = Settings(Path(tmp), data_root, cache_dir, seal=seal, checkpoint_every=None,
                            hide=(Path("results").resolve(),))  # where a vandal would look first
        (outcome,) = run_suite(_SecretRunner(suite, registry, settings, data, files), LocalExecutor())
    where = "sealed" if seal else "in this process"
    if outcome.status != "ok":
        return None, f"failed {where}: {outcome.error}"
    if seal and not outcome.record.get("isolation", {}).get("sealed"):
        return None, "the sealed run did not run sealed"
    return outcome.record, None


def compare(sealed_numbers: list[Any], here_numbers: list[Any], note: list[str]) -> str | None:
    """None if the numbers of the sealed run and of the run in reach of the labels are identical, else why not."""
    if sealed_numbers != here_numbers:
        a, b = (n[1][0]["accuracy_mean"] for n in (here_numbers, sealed_numbers))
        return (f"results differ when the plugin cannot reach labels, data files or the cache (accuracy "
                f"{100 * a:.1f}% in reach of them, {100 * b:.1f}% sealed): it reads what it must not")
    note.append("bit-identical in reach of the labels and in a sealed worker on a secret synthetic dataset")
    return None


def sealed_isolation(suite_data: dict[str, Any], registry: Registry, data: ImageSet, files: list[str],
                     data_root: Path, cache_dir: Path, note: list[str]) -> str | None:
    """Run ``suite_data`` on ``data`` sealed, then (only if that passed: a vandal caught by the seal does
    not get to act here) in this process; None if both are ok and bit-identical, else what went wrong."""
    got = {}
    for seal in (True, False):
        record, problem = secret_run(suite_data, registry, data, files, data_root, cache_dir, seal)
        if problem:
            return problem
        got[seal] = numbers(record)
    return compare(got[True], got[False], note)
