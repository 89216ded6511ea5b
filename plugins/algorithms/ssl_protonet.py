"""Self-supervised + meta: ProtoCLR pre-training, then ProtoNet episodes on generated tasks.

ProtoTransfer (Medina, Devos & Grossglauser, "Self-Supervised Prototypical Transfer Learning for Few-Shot
Classification", 2020, arXiv:2006.11325) pre-trains a Conv-4 embedding with ProtoCLR, a contrastive loss in
prototypical form: a batch of N unlabeled images is an N-way task whose support is the images themselves and
whose queries are Q augmented views of each (paper: N = 50, Q = 3, Adam 1e-3). Here the pre-training runs on
``ctx.unlabeled`` for ``pretrain_steps`` steps; the suite's meta-training budget then continues with
ProtoNet episodes from the run's (unsupervised) task generator, e.g. CACTUs or UMTRA tasks.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from metabench import Budget, Claim, EpisodeBatch, PluginError, RunContext, hookimpl
from metabench.toolkit.augment import PROFILES, augment, auto_profile, sample_distinct
from metabench.toolkit.episodes import to_float
from metabench_plugins.algorithms.protonet import ProtoNet, prototype_logits


class SSLProtoNet(ProtoNet):
    """ProtoCLR self-supervised pre-training, then ProtoNet on generated tasks."""

    name = "ssl_protonet"
    description = "ProtoTransfer: ProtoCLR contrastive pre-training on unlabeled images, then ProtoNet episodes"
    paper = ("Medina, Devos & Grossglauser 2020, Self-Supervised Prototypical Transfer Learning for "
             "Few-Shot Classification, arXiv:2006.11325")
    defaults = {**ProtoNet.defaults, "pretrain_steps": 1000, "pretrain_ways": 50, "pretrain_queries": 3,
                "augmentation": "auto"}
    claims = Claim.grid("Medina et al. 2020 (ProtoTransfer)", "Table 1", "omniglot",
                        {(5, 1): (88.00, 0.64), (5, 5): (96.48, 0.26), (20, 1): (72.27, 0.47),
                         (20, 5): (89.08, 0.28)}, task_generator="unlabeled",
                        note="Table 1 (Omniglot), row 'ProtoTransfer'; paper fine-tunes (ProtoTune), ours does not; "
                             "5-way values match a copy of the table; 20-way not verified")
    resumable = False  # ProtoCLR pre-training runs inside meta_train, outside the checkpointed steps

    def setup(self, ctx: RunContext) -> None:
        """Build the ProtoNet model and keep the unlabeled images for pre-training."""
        super().setup(ctx)
        if ctx.unlabeled is None or len(ctx.unlabeled) < int(ctx.options["pretrain_ways"]):
            raise PluginError("ssl_protonet: needs at least pretrain_ways unlabeled meta-training images")
        profile = ctx.options["augmentation"]
        self.profile = auto_profile(ctx.image_shape, ctx.augmentation) if profile == "auto" else profile
        if self.profile not in PROFILES:
            raise PluginError(f"ssl_protonet: unknown augmentation {profile!r}; known: {sorted(PROFILES)}")
        self.unlabeled = ctx.unlabeled.images
        self.pre_gen = ctx.generator("protoclr")
        self.pre_opt = torch.optim.Adam(self.net.parameters(), lr=float(ctx.options["lr"]))
        self.o = ctx.options

    def protoclr_step(self) -> float:
        """One ProtoCLR step: N images as N classes, their augmented views as queries."""
        n, q = int(self.o["pretrain_ways"]), int(self.o["pretrain_queries"])
        m = torch.tensor([self.unlabeled.shape[0]], device=self.unlabeled.device)
        src = to_float(self.unlabeled[sample_distinct(m, n, self.pre_gen)[0]])            # [N, C, H, W]
        views = augment(src.repeat_interleave(q, 0), self.pre_gen, self.profile)        # [N*Q, ...]
        self.net.train()
        zs, zq = self._embed_tasks(src.unsqueeze(0), views.unsqueeze(0))
        y = torch.arange(n, device=src.device)
        logits = prototype_logits(zs, y.unsqueeze(0), zq, n)
        loss = F.cross_entropy(logits[0], y.repeat_interleave(q))
        self.pre_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.pre_opt.step()
        return loss.item()

    def meta_train(self, stream: Iterator[EpisodeBatch], budget: Budget, on_step=None) -> list[float]:
        """``pretrain_steps`` ProtoCLR steps, then the budget's ProtoNet steps on generated tasks."""
        losses = [self.protoclr_step() for _ in range(int(self.o["pretrain_steps"]))]
        if losses and not torch.isfinite(torch.tensor(losses[-1])):
            raise PluginError(f"ssl_protonet: non-finite ProtoCLR loss {losses[-1]}")
        return losses + super().meta_train(stream, budget, on_step)


@hookimpl
def metabench_algorithms():
    return [SSLProtoNet]
