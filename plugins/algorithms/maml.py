"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017, arXiv:1703.03400).

An initialisation θ of a Conv-4 + linear classifier is meta-learned so that a few SGD steps on a task's
support set, θ' = θ - α ∇L_support(θ), give a low query loss L_query(θ'). The meta-gradient is second
order: it differentiates through the inner steps. Omniglot settings of the paper: α = 0.4, one inner
step for 5-way at training, three at test, Adam at 1e-3 on the meta-objective. Batch norm uses each
task's batch statistics (no running averages), as in the reference code; query sets are normalised as
one batch (the paper's transductive setting). The backbone here is the suite's Conv-4 with max-pooling
(the paper's Omniglot network uses strided convolutions instead); option ``backbone = "resnet12"`` swaps in
a ResNet-12 (:func:`metabench.toolkit.nets.backbone`) with the same per-task batch norm.
"""
from __future__ import annotations

import torch

from metabench import Algorithm, Claim, EpisodeBatch, PluginError, RunContext, hookimpl
from metabench.toolkit.inner_loop import (InnerLoop, MetaModel, Params, meta_backward, predict_logits,
                                          resolve_chunk, resolve_path)
from metabench.toolkit import task_threads
from metabench.toolkit.layout import activation_layout, resolve_channels_last
from metabench.toolkit.task_threads import TaskThreads
from metabench.seeding import derive_seed, seeded


class MAML(Algorithm):
    """Second-order MAML; FOMAML, Meta-SGD and ANIL subclass it."""

    name = "maml"
    description = "MAML: second-order meta-learned initialisation adapted by SGD on the support set"
    paper = "Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning for Fast Adaptation of Deep " \
            "Networks (ICML), arXiv:1703.03400"
    defaults = {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 3, "outer_lr": 1e-3,
                "first_order": False, "path": "auto", "hidden": 64, "channels_last": "auto",
                "meta_grad_chunk": "auto", "task_threads": "auto", "backbone": "conv4"}
    claims = Claim.grid("Finn et al. 2017", "Table 1", "omniglot",
                        {(5, 1): (98.7, 0.4), (5, 5): (99.9, 0.1), (20, 1): (95.8, 0.3), (20, 5): (98.9, 0.2)},
                        note="Table 1 (Omniglot), row 'MAML (ours)'; checked against the paper's text; "
                             "paper's Omniglot net uses strided convs, not max-pooling")
    head_only = False  # ANIL adapts only the head
    trains_per_way = True   # the head has one output per way: one training per test way count
    resumable = True  # the model, Meta-SGD's rates and Adam's moments are all the training state

    def setup(self, ctx: RunContext) -> None:
        """Build the model (seeded), the meta-parameters and the Adam meta-optimiser."""
        o = ctx.options
        if o["backbone"] != "conv4" and o["path"] == "grouped":
            raise PluginError(f"{self.name}: path 'grouped' folds Conv-4's convolutions; use another path "
                              f"with backbone {o['backbone']!r}")
        with seeded(derive_seed(ctx.seed, "init")):
            try:
                self.model = MetaModel(ctx.image_shape, ctx.ways, hidden=int(o["hidden"]),
                                       backbone=str(o["backbone"])).to(ctx.device)
            except ValueError as exc:
                raise PluginError(f"{self.name}: {exc}") from None
            self.lrs = self.make_lrs(ctx)
        fo, lr = bool(o["first_order"]), float(o.get("inner_lr", 0.0))  # Meta-SGD has no inner_lr
        try:
            foldable = o["backbone"] == "conv4"
            self.path = resolve_path(str(o["path"]), ctx.device, ctx.ways * (ctx.shots + ctx.queries), foldable)
            self.predict_path = resolve_path(str(o["path"]), ctx.device, foldable=foldable, phase="predict")
            # activation layout per phase; test-time adaptation is first order
            self.train_cl = resolve_channels_last(o["channels_last"], ctx.device, self.path, not (fo or self.head_only))
            self.test_cl = resolve_channels_last(o["channels_last"], ctx.device, self.predict_path, False)
            self.chunk = resolve_chunk(o["meta_grad_chunk"], self.path, ctx.device)
            self.threads = task_threads.resolve_workers(o["task_threads"], ctx.device)
            self.train_loop = InnerLoop(int(o["inner_steps"]), lr, fo, self.head_only)
            self.test_loop = InnerLoop(int(o["test_inner_steps"]), lr, True, self.head_only)
        except ValueError as exc:
            raise PluginError(f"{self.name}: {exc}") from None
        self.pool = TaskThreads(self.model, self.threads) if self.threads > 1 else None
        self.params: Params = dict(self.model.named_parameters())
        meta = list(self.params.values()) + (list(self.lrs.values()) if self.lrs else [])
        self.opt = torch.optim.Adam(meta, lr=float(o["outer_lr"]))

    def make_lrs(self, ctx: RunContext) -> Params | None:
        """Per-parameter inner learning rates (Meta-SGD); ``None`` uses the scalar ``inner_lr``."""
        return None

    def train_step(self, batch: EpisodeBatch, step: int) -> float:
        """One Adam step on the mean query loss after adapting to each task's support set."""
        return self.step_losses(batch).mean().item()

    def step_losses(self, batch: EpisodeBatch) -> torch.Tensor:
        """:meth:`train_step` without the host sync (CUDA-graph capturable): the per-task losses ``[T]``.
        Option ``meta_grad_chunk`` = k > 0 backpropagates k tasks at a time (less memory, the same gradient
        up to round-off); 0 is one backward over the meta-batch; ``"auto"`` (default) is
        :func:`~metabench.toolkit.inner_loop.resolve_chunk`'s per-path, per-device choice. Option
        ``task_threads`` = n > 1 splits the tasks between n threads (:mod:`metabench.toolkit.task_threads`,
        each chunking its share so; ``"auto"``: one per core on CPU), the same gradient up to round-off."""
        self.opt.zero_grad(set_to_none=True)
        b = batch
        with activation_layout(self.train_cl):
            if self.pool is not None:
                losses = task_threads.meta_backward(self.pool, self.params, b.support_x, b.support_y, b.query_x,
                                                    b.query_y, self.train_loop, self.lrs, self.path, self.chunk)
            else:
                losses = meta_backward(self.model, self.params, b.support_x, b.support_y, b.query_x, b.query_y,
                                       self.train_loop, self.lrs, self.path, self.chunk)
        self.opt.step()
        return losses

    def predict(self, support_x, support_y, query_x, ways):
        """Query logits ``[T, N*Q, ways]`` after ``test_inner_steps`` steps on each support set."""
        with activation_layout(self.test_cl):
            return predict_logits(self.model, self.params, support_x, support_y, query_x, ways, self.test_loop,
                                  self.predict_path, self.name, self.lrs)

    @torch.no_grad()
    def embed(self, x):
        """Backbone features ``[M, D]`` (batch norm with the statistics of ``x``)."""
        return self.model.backbone(x)


@hookimpl
def metabench_algorithms():
    return [MAML]
