"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017, arXiv:1703.05175).

A Conv-4 embedding (option ``backbone = "resnet12"``: a ResNet-12, Oreshkin et al. 2018 / Lee et al.
2019) is trained episodically; a query is classified by the negative squared Euclidean
distance to each class prototype, the mean embedding of that class's support images. Adam at 1e-3,
halved every 2000 episodes, as in the paper.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from metabench import Algorithm, Claim, EpisodeBatch, PluginError, RunContext, hookimpl
from metabench.toolkit.nets import backbone
from metabench.seeding import derive_seed, seeded


def prototype_logits(z_support: torch.Tensor, y_support: torch.Tensor, z_query: torch.Tensor,
                     ways: int) -> torch.Tensor:
    """Negative squared distances ``[T, Q, ways]`` from queries ``[T, Q, D]`` to the class means of
    supports ``[T, S, D]`` labelled ``y_support`` ``[T, S]``."""
    onehot = F.one_hot(y_support, ways).to(z_support.dtype)              # [T, S, N]
    protos = onehot.transpose(1, 2) @ z_support / onehot.sum(1).clamp(min=1).unsqueeze(-1)
    return -(z_query.unsqueeze(2) - protos.unsqueeze(1)).pow(2).sum(-1)


class ProtoNet(Algorithm):
    """Prototypical Networks with the Conv-4 backbone (64 filters) or a ResNet-12 (option ``backbone``)."""

    name = "protonet"
    description = "Prototypical Networks: nearest class mean in a learned Conv-4 embedding"
    paper = "Snell, Swersky & Zemel 2017, Prototypical Networks for Few-shot Learning (NeurIPS)"
    defaults = {"lr": 1e-3, "lr_decay_every": 2000, "lr_decay": 0.5, "hidden": 64,
                "channels_last": True, "backbone": "conv4"}
    claims = Claim.grid("Snell et al. 2017", "Table 1", "omniglot",
                        {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9},
                        note="Table 1, row 'Prototypical Networks (ours)', Euclid., no fine-tuning; checked against "
                             "the paper's text; no CI published (1000 test episodes); trained 60-way")
    resumable = True
    smoke_partner = {"hidden": 8}  # a small, fast reference for checking datasets and task generators

    def setup(self, ctx: RunContext) -> None:
        """Build the embedding (option ``backbone``) and its Adam optimiser."""
        o = ctx.options
        with seeded(derive_seed(ctx.seed, "init")):
            try:
                self.net = backbone(str(o["backbone"]), ctx.image_shape, hidden=int(o["hidden"])).to(ctx.device)
            except ValueError as exc:
                raise PluginError(f"{self.name}: {exc}") from None
        self.memory_format = torch.channels_last if o["channels_last"] else torch.contiguous_format
        self.net = self.net.to(memory_format=self.memory_format)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=float(o["lr"]))
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, int(o["lr_decay_every"]), float(o["lr_decay"]))

    def _embed_tasks(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        """Embed several ``[T, M_i, C, H, W]`` tensors in one forward pass; returns ``[T, M_i, D]`` each."""
        t = xs[0].shape[0]
        flat = torch.cat([x.flatten(0, 1) for x in xs]).contiguous(memory_format=self.memory_format)
        z = self.net(flat)
        out, start = [], 0
        for x in xs:
            m = x.shape[0] * x.shape[1]
            out.append(z[start:start + m].view(t, x.shape[1], -1))
            start += m
        return out

    def train_step(self, batch: EpisodeBatch, step: int) -> float:
        """One Adam step on the mean query cross-entropy of the meta-batch."""
        self.net.train()
        zs, zq = self._embed_tasks(batch.support_x, batch.query_x)
        logits = prototype_logits(zs, batch.support_y, zq, batch.ways)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return loss.item()

    @torch.no_grad()
    def predict(self, support_x, support_y, query_x, ways):
        """Logits ``[T, N*Q, ways]``: no adaptation beyond computing the prototypes."""
        self.net.eval()
        zs, zq = self._embed_tasks(support_x, query_x)
        return prototype_logits(zs, support_y, zq, ways)

    @torch.no_grad()
    def embed(self, x):
        """The backbone's features ``[M, D]``."""
        self.net.eval()
        return self.net(x.contiguous(memory_format=self.memory_format))


@hookimpl
def metabench_algorithms():
    return [ProtoNet]
