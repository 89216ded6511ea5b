"""Reptile (Nichol, Achiam & Schulman 2018, On First-Order Meta-Learning Algorithms, arXiv:1803.02999).

Each task of a meta-batch is trained from θ by a few Adam steps on minibatches of its images, giving
φ_i; then θ ← θ + ε (mean_i φ_i − θ), with ε annealed linearly from 1 to 0 over the run. Defaults are
the paper's Omniglot settings (its appendix and the supervised-reptile code): Adam with lr 1e-3 and
β1 = 0, 5 inner steps on minibatches of 10, 50 steps on minibatches of 5 at test. A training task's
support and query images are all used for the inner steps (the paper trains on more shots than it
tests with). Deviation: Adam's moments start from zero for every task (the reference code carries them
across tasks), which keeps tasks independent and lets them run under ``vmap``. Batch norm uses batch
statistics and the query set is normalised as one batch (the paper's transductive setting).
"""
from __future__ import annotations

import math

import torch

from metabench import Algorithm, Budget, Claim, EpisodeBatch, PluginError, RunContext, hookimpl
from metabench.toolkit.inner_loop import (InnerLoop, MetaModel, Params, check_path, meta_batch_adapt, predict_logits,
                                          resolve_chunk, resolve_path)
from metabench.toolkit.layout import activation_layout, resolve_channels_last
from metabench.seeding import derive_seed, seeded


def minibatches(x: torch.Tensor, y: torch.Tensor, steps: int, size: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per task, ``steps`` minibatches of ``size`` drawn by walking through reshuffled copies of the
    task's ``M`` images: ``[T, M, ...]`` -> ``[T, steps, size, ...]``."""
    t, m = y.shape
    reps = math.ceil(steps * size / m)
    order = torch.rand(t, reps, m, generator=generator, device=y.device).argsort(-1).flatten(1)
    idx = order[:, :steps * size].reshape(t, steps, size)
    rows = torch.arange(t, device=y.device).view(t, 1, 1)
    return x[rows, idx], y[rows, idx]


def resolve_task_chunk(option: int | str, path: str, device: torch.device | str) -> int:
    """Tasks adapted together per call in meta-training, for option ``task_chunk``: the MAML family's rule for
    ``meta_grad_chunk`` (:func:`~metabench.toolkit.inner_loop.resolve_chunk`: an integer is kept, 0 for the whole
    meta-batch; ``"auto"``: one on the ``loop``, 4 on the other paths on CPU, all on CUDA). On CPU
    (``benchmarks/results/cpu2-reptile-task-chunk.json``) the ``grouped`` path meta-trains 1.9-2.1x as fast as
    the loop with 4, 8, 16 or all 32 tasks at a time; 4 holds the least memory (2.5x the loop's, against 8.3x
    for all 32)."""
    try:
        return resolve_chunk(option, path, device)
    except ValueError:
        raise ValueError(f"task_chunk must be 'auto' or an integer >= 0, got {option!r}") from None


class Reptile(Algorithm):
    """Reptile with an Adam inner loop and a linearly annealed outer step."""

    name = "reptile"
    description = "Reptile: move the initialisation towards the weights trained on each task"
    paper = "Nichol, Achiam & Schulman 2018, On First-Order Meta-Learning Algorithms, arXiv:1803.02999"
    defaults = {"inner_lr": 1e-3, "inner_optimizer": "adam", "inner_steps": 5, "inner_batch": 10,
                "test_inner_steps": 50, "test_inner_batch": 5, "outer_step": 1.0, "outer_step_final": 0.0,
                "total_steps": 0, "path": "auto", "hidden": 64, "backbone": "conv4",
                "channels_last": "auto", "task_chunk": "auto"}
    claims = Claim.grid("Nichol et al. 2018 (Reptile + transduction)", "Table 2", "omniglot",
                        {(5, 1): (97.68, 0.04), (5, 5): (99.48, 0.06), (20, 1): (89.43, 0.14),
                         (20, 5): (97.12, 0.32)},
                        note="Table 2 (Omniglot; was mislabelled Table 1), row 'Reptile + Transduction', arXiv v3 "
                             "(v1 had other numbers); checked against copies of the table, not the PDF")
    trains_per_way = True   # the head has one output per way: one training per test way count
    resumable = True  # model, minibatch generators and the annealing horizon are its state

    def setup(self, ctx: RunContext) -> None:
        """Build the model (seeded) and the inner loops; minibatches come from seeded generators."""
        o = ctx.options
        with seeded(derive_seed(ctx.seed, "init")):
            try:  # option backbone: "conv4" or "resnet12" (metabench.toolkit.nets.backbone)
                self.model = MetaModel(ctx.image_shape, ctx.ways, hidden=int(o["hidden"]),
                                       backbone=str(o["backbone"])).to(ctx.device)
            except ValueError as exc:
                raise PluginError(f"{self.name}: {exc}") from None
        try:
            # auto on CPU: meta-training on the grouped path (each inner step sees `inner_batch` images of a
            # task), `task_chunk` tasks at a time; the episodes of an evaluation batch adapted together
            foldable = o["backbone"] == "conv4"
            self.path = resolve_path(str(o["path"]), ctx.device, int(o["inner_batch"]), foldable)
            check_path(self.model, self.path)
            self.chunk = resolve_task_chunk(o["task_chunk"], self.path, ctx.device)
            self.predict_path = resolve_path(str(o["path"]), ctx.device, foldable=foldable, phase="predict")
            self.train_cl = resolve_channels_last(o["channels_last"], ctx.device, self.path, False)
            self.test_cl = resolve_channels_last(o["channels_last"], ctx.device, self.predict_path, False)
            self.train_loop = InnerLoop(int(o["inner_steps"]), float(o["inner_lr"]), True,
                                        optimizer=str(o["inner_optimizer"]), minibatches=True)
            self.test_loop = InnerLoop(int(o["test_inner_steps"]), float(o["inner_lr"]), True,
                                       optimizer=str(o["inner_optimizer"]), minibatches=True)
        except ValueError as exc:
            raise PluginError(f"{self.name}: {exc}") from None
        self.params: Params = dict(self.model.named_parameters())
        self.batch, self.test_batch = int(o["inner_batch"]), int(o["test_inner_batch"])
        self.eps0, self.eps1 = float(o["outer_step"]), float(o["outer_step_final"])
        self.total_steps = int(o["total_steps"])
        self.train_gen = ctx.generator("reptile-train-minibatches")
        self.test_gen = ctx.generator("reptile-test-minibatches")

    def meta_train(self, stream, budget: Budget, on_step=None) -> list[float]:
        """The base loop; ``total_steps = 0`` anneals ε over the run's budget."""
        if self.total_steps <= 0:
            self.total_steps = budget.steps
        return super().meta_train(stream, budget, on_step)

    def outer_step_size(self, step: int) -> float:
        """ε at ``step``: linear from ``outer_step`` to ``outer_step_final`` over ``total_steps``."""
        frac = min(step / self.total_steps, 1.0) if self.total_steps > 0 else 0.0
        return (1 - frac) * self.eps0 + frac * self.eps1

    def train_step(self, batch: EpisodeBatch, step: int) -> float:
        """Adapt every task from θ, then θ ← θ + ε (mean φ − θ); returns the mean last inner loss."""
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        xb, yb = minibatches(x, y, self.train_loop.steps, self.batch, self.train_gen)
        theta = {k: v.detach() for k, v in self.params.items()}
        tasks = y.shape[0]
        chunk = self.chunk if 0 < self.chunk < tasks else tasks
        total: Params = {k: torch.zeros_like(v) for k, v in theta.items()}
        losses = []
        with activation_layout(self.train_cl):
            for s in range(0, tasks, chunk):  # tasks adapted together, chunk by chunk: the memory of one chunk
                phis, loss = meta_batch_adapt(self.model, theta, xb[s:s + chunk], yb[s:s + chunk], self.train_loop,
                                              self.path)
                for k in total:
                    total[k] += phis[k].detach().sum(0)
                losses.append(loss.detach())
        eps = self.outer_step_size(step)
        with torch.no_grad():
            for k, p in self.params.items():
                p.add_(total[k] / tasks - p, alpha=eps)
        return torch.cat(losses).mean().item()

    def predict(self, support_x, support_y, query_x, ways):
        """Query logits after ``test_inner_steps`` Adam steps on minibatches of the support set."""
        xb, yb = minibatches(support_x, support_y, self.test_loop.steps, self.test_batch, self.test_gen)
        with activation_layout(self.test_cl):
            return predict_logits(self.model, self.params, xb, yb, query_x, ways, self.test_loop,
                                  self.predict_path, self.name)

    @torch.no_grad()
    def embed(self, x):
        """Backbone features ``[M, D]`` (batch norm with the statistics of ``x``)."""
        return self.model.backbone(x)


@hookimpl
def metabench_algorithms():
    return [Reptile]
