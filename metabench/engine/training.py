"""What meta-training needs wherever it runs (in the runner's process or in a sealed worker): blaming the
plugin stage that fails, and the checked stream of meta-batches a task generator gives."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import torch

from metabench.contracts import EpisodeBatch, PluginError, TaskGenerator


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA), so that timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stage:
    """Remembers which plugin is running, so a failure can be blamed on it; ``on_enter`` (optional) hears
    of each stage entered, e.g. to let a supervising process blame the right plugin for a timeout."""

    def __init__(self, on_enter: Callable[[str], None] | None = None) -> None:
        self.plugin: str | None = None
        self.on_enter = on_enter

    def __call__(self, plugin: str) -> "Stage":
        self.plugin = plugin
        if self.on_enter is not None:
            self.on_enter(plugin)
        return self

    def __enter__(self) -> "Stage":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.plugin = None  # finished cleanly: a later core error is not this plugin's fault
        return False


def task_stream(generator: TaskGenerator, gen_entry: str, alg_entry: str, meta_batch: int,
                shape: tuple[int, int, int], image_shape: tuple[int, ...], episode_gen: torch.Generator,
                stage: Stage, checked: dict[str, Any]) -> Iterator[EpisodeBatch]:
    """Meta-batches of ``meta_batch`` tasks of ``shape`` (ways, shots, queries) from ``generator``, the first
    three checked against the contract (checking every one would sync the device each step);
    ``checked["tasks"]`` counts the tasks handed out."""
    ways, shots, queries = shape
    while True:
        with stage(f"task_generator:{gen_entry}"):
            batch = generator.sample(meta_batch, episode_gen)
            if not isinstance(batch, EpisodeBatch):
                raise PluginError(f"{gen_entry}: sample() must return an EpisodeBatch, got {type(batch).__name__}")
            if checked["n"] < 3:
                batch.check(gen_entry, meta_batch, ways, shots, queries, image_shape)
                checked["n"] += 1
        stage(f"algorithm:{alg_entry}")
        checked["tasks"] += batch.tasks
        yield batch
