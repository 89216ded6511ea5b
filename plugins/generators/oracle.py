"""Supervised ``oracle`` task generator: episodes from the true class labels of the meta-training split.

The upper bound every unsupervised task generator is compared with (Hsu, Levine & Finn, "Unsupervised
Learning via Meta-Learning", ICLR 2019, report it as "oracle"). It is the only built-in that sees labels.
"""
from __future__ import annotations

import torch

from metabench import EpisodeBatch, LabeledSplit, RunContext, TaskGenerator, hookimpl
from metabench.toolkit.episodes import EpisodeSampler


class Oracle(TaskGenerator):
    """N-way K-shot tasks drawn from the real labels (supervised meta-learning)."""

    name = "oracle"
    description = "Supervised tasks from the true labels: the upper bound for unsupervised generators"
    paper = "Vinyals et al. 2016, Matching Networks for One Shot Learning (episodic training)"
    uses_labels = True
    smoke_partner = {}  # the supervised reference for checking algorithms and datasets

    def setup(self, data: LabeledSplit, ctx: RunContext) -> None:
        """Index the labeled split once on the run's device."""
        self.sampler = EpisodeSampler(data.images, data.labels, ctx.ways, ctx.shots, ctx.queries)

    def sample(self, tasks: int, generator: torch.Generator) -> EpisodeBatch:
        """A meta-batch of ``tasks`` supervised episodes."""
        return self.sampler.sample(tasks, generator)


@hookimpl
def metabench_task_generators():
    return [Oracle]
