"""``unlabeled``: no meta-training tasks at all.

For algorithms that learn from the unlabeled meta-training images directly (``ctx.unlabeled``): the
no-meta baselines of CACTUs (Hsu, Levine & Finn, ICLR 2019, Table 1: embedding + kNN / linear classifier)
and purely self-supervised pre-training (ProtoTransfer's ProtoCLR, Medina et al. 2020). Pairing it with an
algorithm that asks for tasks is an error, so a leaderboard row with this generator used no tasks.
"""
from __future__ import annotations

import torch

from metabench import EpisodeBatch, PluginError, RunContext, TaskGenerator, UnlabeledSplit, hookimpl


class NoTasks(TaskGenerator):
    """Gives no tasks: the algorithm learns from the unlabeled split alone."""

    name = "unlabeled"
    description = "No tasks: the algorithm learns from the unlabeled images alone (SSL, no-meta baselines)"
    paper = "Hsu, Levine & Finn 2019, Unsupervised Learning via Meta-Learning, ICLR (no-meta baselines)"
    gives_tasks = False

    def setup(self, data: UnlabeledSplit, ctx: RunContext) -> None:
        """Nothing to prepare."""

    def sample(self, tasks: int, generator: torch.Generator) -> EpisodeBatch:
        """Always an error: this generator stands for 'no meta-training tasks'."""
        raise PluginError("unlabeled: this generator gives no tasks; pair it with an algorithm that learns "
                          "from the unlabeled split (ssl_protonet, embed_knn, embed_linear)")


@hookimpl
def metabench_task_generators():
    return [NoTasks]
