"""PsCo: unsupervised meta-learning by few-shot pseudo-supervised contrast on a momentum queue.

Jang, Lee & Shin, "Unsupervised Meta-learning via Few-shot Pseudo-supervised Contrastive Learning", ICLR
2023, arXiv:2303.00996; authors' code github.com/alinlab/PsCo (``models.py: PsCoMoCo``, ``utils.py:
evaluate_fewshot``). Each step builds an N-way K-shot pseudo-task from a batch of N unlabeled images:

* two augmented views; the online network (Conv-4 backbone, projector and predictor MLPs) embeds view 1 as
  the N queries ``p``, the momentum network (EMA of backbone and projector) embeds view 2 as ``z``;
* the scores ``z @ queue.T`` against a queue of past momentum embeddings are turned into an assignment by
  Sinkhorn-Knopp (:func:`sinkhorn`), and each sample's top-K queue entries become its K pseudo-shots
  (:func:`pseudo_shots`);
* loss = supervised contrast of the queries against the N*K shots (:func:`supcon_loss`, temperature
  ``temperature2``) + MoCo (positive ``z``, negatives the queue, ``temperature``); ``z`` then enters the queue.

Meta-test (the paper's Table 1, ``--eval-fewshot-metric supcon``) needs no fine-tuning: support images go
through the online backbone and projector, queries also through the predictor; a query's logits are its
cosine similarities to the normalised class means of the supports (divided by ``temperature2``).
Defaults follow the authors' Omniglot command (Conv-4, K = 1 shot, queue 16384, momentum 0.99, temperatures
0.2 / 1, 3 Sinkhorn iterations at eps 0.05, SGD 0.03 x batch/256 with momentum 0.9, wd 5e-4, cosine
schedule), except for the CPU-sized budget (``pretrain_steps``, ``batch``, ``mlp_hidden``): see ``defaults``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from metabench import Algorithm, Budget, Claim, EpisodeBatch, PluginError, RunContext, hookimpl
from metabench.toolkit.augment import PROFILES, Profile, augment, auto_profile, sample_distinct
from metabench.toolkit.episodes import to_float
from metabench.toolkit.nets import Conv4
from metabench.seeding import derive_seed, seeded

# The authors' Omniglot pipeline (datasets.py): RandomResizedCrop(28, scale=(0.2, 1)) + horizontal flip.
PAPER_PROFILE = Profile(crop=0.2, hflip=0.5)


def sinkhorn(scores: torch.Tensor, iters: int = 3, eps: float = 0.05) -> torch.Tensor:
    """Sinkhorn-Knopp assignment ``[N, M]`` of M queue entries to N samples from scores ``[N, M]``.

    Approximately solves ``max_A tr(A^T S) + eps H(A)`` over the transport polytope (rows summing to 1/N,
    columns to 1/M) by alternately normalising the columns and the rows of ``exp(S / eps)``; the result is
    rescaled by N so that each row (each sample) is a distribution over the queue (sums exactly to 1; the
    columns to about N/M). The authors' ``distributed_sinkhorn(normalization='row')``; subtracting the
    maximum score first only rescales ``exp(S / eps)``, which the first normalisation removes.
    """
    n, m = scores.shape
    a = torch.exp((scores - scores.max()) / eps)
    a = a / a.sum()
    for _ in range(iters):
        a = a / a.sum(0, keepdim=True) / m     # every queue entry carries 1/M
        a = a / a.sum(1, keepdim=True) / n     # every sample carries 1/N
    return a * n


def pseudo_shots(assignment: torch.Tensor, shots: int) -> torch.Tensor:
    """Queue indices ``[N, K]`` of each sample's K pseudo-shots: its K largest assignments (descending)."""
    return torch.topk(assignment, k=shots, dim=1).indices


def supcon_loss(p: torch.Tensor, support: torch.Tensor, shots: int, temperature: float) -> torch.Tensor:
    """Supervised contrast of queries ``p`` ``[N, D]`` against supports ``[N*K, D]`` (sample i's shots at
    rows ``i*K..i*K+K-1``): mean over i of ``logsumexp_j(p_i.s_j / t) - mean_k(p_i.s_ik) / t``."""
    logits = p @ support.T / temperature                                     # [N, N*K]
    pos = logits.view(p.shape[0], p.shape[0], shots).diagonal(dim1=0, dim2=1).mean(0)  # [N]
    return (logits.logsumexp(1) - pos).mean()


def mlp(dim_in: int, hidden: int, dim_out: int, last_bn: bool) -> nn.Sequential:
    """Linear-BN-ReLU-Linear (no biases), with a final affine-free BN for the projector, as the authors'."""
    layers: list[nn.Module] = [nn.Linear(dim_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                               nn.Linear(hidden, dim_out, bias=False)]
    if last_bn:
        layers.append(nn.BatchNorm1d(dim_out, affine=False))
    return nn.Sequential(*layers)


class PsCo(Algorithm):
    """PsCo (MoCo variant) pre-training on the unlabeled images; cosine prototypes at meta-test."""

    name = "psco"
    description = ("PsCo: few-shot pseudo-supervised contrast, pseudo-shots chosen by Sinkhorn-Knopp from a "
                   "momentum queue, plus MoCo; cosine prototypes at test")
    paper = ("Jang, Lee & Shin 2023, Unsupervised Meta-learning via Few-shot Pseudo-supervised Contrastive "
             "Learning (ICLR), arXiv:2303.00996")
    defaults = {
        "pretrain_steps": 2000,    # paper: 400 epochs of batch 256 (~150k steps); CPU budget here
        "batch": 128,              # N, images per step (paper: 256)
        "shots": 1,                # K pseudo-shots per sample (authors' Omniglot command: --num-shots 1)
        "queue_size": 16384,
        "momentum": 0.99,
        "temperature": 0.2,        # MoCo term
        "temperature2": 1.0,       # pseudo-supervised contrast term
        "sinkhorn_iters": 3,
        "sinkhorn_eps": 0.05,
        "proj_dim": 256,
        "mlp_hidden": 4096,
        "hidden": 64,              # Conv-4 filters
        "ceil_pool": True,         # authors' Conv-4 pools with ceil_mode on 28x28: 2x2x64 = 256-d features
        "channels_last": True,     # Conv-4 memory format (faster on CPU)
        "optimizer": "sgd",        # sgd (paper) or adam
        "lr": 0.03,                # per 256 images (SGD, scaled by batch/256); Adam uses it as is
        "weight_decay": 5e-4,
        "augmentation": "auto",    # a metabench.toolkit.augment profile, "auto", or "paper" (crop 0.2-1 + flip)
    }
    claims = Claim.grid("Jang, Lee & Shin 2023 (PsCo)", "Table 1", "omniglot",
                        {(5, 1): 96.37, (5, 5): 99.13, (20, 1): 89.64, (20, 5): 97.07},
                        task_generator="unlabeled",
                        note="Table 1 (Omniglot, Conv-4), row 'PsCo (Ours)', values as given in the brief; the "
                             "paper text was not readable from the library (only its conclusion and abstract), "
                             "so the numbers and any CIs are unverified; the method, defaults and the "
                             "meta-test rule were checked against the authors' code (alinlab/PsCo models.py, "
                             "train.py, utils.py, README)")
    resumable = False  # PsCo pre-training runs inside meta_train, outside the checkpointed steps

    def setup(self, ctx: RunContext) -> None:
        """Build online and momentum networks, the queue and the optimiser; keep the unlabeled images."""
        o = self.o = ctx.options
        if ctx.unlabeled is None or len(ctx.unlabeled) < int(o["batch"]):
            raise PluginError("psco: needs at least `batch` unlabeled meta-training images")
        if not 1 <= int(o["shots"]) <= int(o["queue_size"]) or int(o["batch"]) > int(o["queue_size"]):
            raise PluginError("psco: need 1 <= shots <= queue_size and batch <= queue_size")
        profile = o["augmentation"]
        if profile == "auto":
            profile = auto_profile(ctx.image_shape, ctx.augmentation)
        self.profile = PAPER_PROFILE if profile == "paper" else profile
        if profile != "paper" and profile not in PROFILES:
            raise PluginError(f"psco: unknown augmentation {profile!r}; known: paper, {sorted(PROFILES)}")
        if o["optimizer"] not in ("sgd", "adam"):
            raise PluginError(f"psco: optimizer must be sgd or adam, got {o['optimizer']!r}")
        with seeded(derive_seed(ctx.seed, "init")):
            self.backbone = Conv4(ctx.image_shape, hidden=int(o["hidden"])).to(ctx.device)
            if o["ceil_pool"]:
                for mod in self.backbone.modules():
                    if isinstance(mod, nn.MaxPool2d):
                        mod.ceil_mode = True
                with torch.no_grad():
                    self.backbone.out_dim = self.backbone(torch.zeros(2, *ctx.image_shape,
                                                                      device=ctx.device)).shape[1]
            d, h = int(o["proj_dim"]), int(o["mlp_hidden"])
            self.projector = mlp(self.backbone.out_dim, h, d, last_bn=True).to(ctx.device)
            self.predictor = mlp(d, h, d, last_bn=False).to(ctx.device)
        self.memory_format = torch.channels_last if o["channels_last"] else torch.contiguous_format
        self.backbone = self.backbone.to(memory_format=self.memory_format)
        self.ema_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.ema_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.online = nn.Sequential(self.backbone, self.projector, self.predictor)
        self.gen = ctx.generator("psco")
        self.queue = F.normalize(torch.randn(int(o["queue_size"]), d, generator=self.gen, device=ctx.device), dim=1)
        self.ptr = 0
        self.unlabeled = ctx.unlabeled.images
        params = list(self.online.parameters())
        if o["optimizer"] == "sgd":
            lr = float(o["lr"]) * int(o["batch"]) / 256
            self.opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=float(o["weight_decay"]))
        else:
            self.opt = torch.optim.Adam(params, lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, max(1, int(o["pretrain_steps"])))

    @torch.no_grad()
    def _update_momentum(self) -> None:
        """EMA of the online backbone and projector parameters; batch-norm buffers are copied."""
        m = float(self.o["momentum"])
        for src, dst in ((self.backbone, self.ema_backbone), (self.projector, self.ema_projector)):
            for ps, pd in zip(src.parameters(), dst.parameters()):
                pd.mul_(m).add_(ps, alpha=1 - m)
            for bs, bd in zip(src.buffers(), dst.buffers()):
                bd.copy_(bs)

    def psco_step(self, x: torch.Tensor) -> float:
        """One PsCo update on float images ``x`` ``[N, C, H, W]`` (two augmented views each)."""
        o, n = self.o, x.shape[0]
        x1 = augment(x, self.gen, self.profile).contiguous(memory_format=self.memory_format)
        x2 = augment(x, self.gen, self.profile).contiguous(memory_format=self.memory_format)
        self.online.train()
        self._update_momentum()  # the authors update the momentum network before computing the loss
        p = F.normalize(self.online(x1), dim=1)                                   # [N, D] queries
        with torch.no_grad():
            self.ema_backbone.train()
            self.ema_projector.train()
            z = F.normalize(self.ema_projector(self.ema_backbone(x2)), dim=1)     # [N, D] momentum keys
            assign = sinkhorn(z @ self.queue.T, int(o["sinkhorn_iters"]), float(o["sinkhorn_eps"]))
            support = self.queue[pseudo_shots(assign, int(o["shots"])).reshape(-1)]  # [N*K, D]
        loss = supcon_loss(p, support, int(o["shots"]), float(o["temperature2"]))
        moco = torch.cat([(p * z).sum(1, keepdim=True), p @ self.queue.T], 1) / float(o["temperature"])
        loss = loss + F.cross_entropy(moco, torch.zeros(n, dtype=torch.long, device=x.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        with torch.no_grad():
            idx = (self.ptr + torch.arange(n, device=x.device)) % self.queue.shape[0]
            self.queue[idx] = z
            self.ptr = (self.ptr + n) % self.queue.shape[0]
        value = loss.item()
        if not math.isfinite(value):
            raise PluginError(f"psco: non-finite loss {value}")
        return value

    def pretrain_step(self) -> float:
        """One PsCo step on ``batch`` distinct random unlabeled images."""
        m = torch.tensor([self.unlabeled.shape[0]], device=self.unlabeled.device)
        idx = sample_distinct(m, int(self.o["batch"]), self.gen)[0]
        return self.psco_step(to_float(self.unlabeled[idx]))

    def train_step(self, batch: EpisodeBatch, step: int) -> float:
        """A PsCo step on a meta-batch's images, its labels unused (for budgets with stream steps)."""
        x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        return self.psco_step(x)

    def meta_train(self, stream: Iterator[EpisodeBatch], budget: Budget, on_step=None) -> list[float]:
        """``pretrain_steps`` PsCo steps on the unlabeled images, then the budget's steps (if any) on the
        stream's images (labels unused)."""
        losses = [self.pretrain_step() for _ in range(int(self.o["pretrain_steps"]))]
        return losses + super().meta_train(stream, budget, on_step)

    def _features(self, x: torch.Tensor, predict: bool) -> torch.Tensor:
        z = self.projector(self.backbone(x.contiguous(memory_format=self.memory_format)))
        return F.normalize(self.predictor(z) if predict else z, dim=1)

    @torch.no_grad()
    def predict(self, support_x, support_y, query_x, ways):
        """Logits ``[T, N*Q, ways]``: cosine similarity of predictor outputs of the queries to the normalised
        mean projector outputs of each class's supports, over ``temperature2`` (no fine-tuning)."""
        self.online.eval()
        t = support_x.shape[0]
        zs = self._features(support_x.flatten(0, 1), False).view(t, support_x.shape[1], -1)
        zq = self._features(query_x.flatten(0, 1), True).view(t, query_x.shape[1], -1)
        onehot = F.one_hot(support_y, ways).to(zs.dtype)                          # [T, S, N]
        protos = F.normalize(onehot.transpose(1, 2) @ zs, dim=2)                  # [T, N, D]
        return zq @ protos.transpose(1, 2) / float(self.o["temperature2"])

    @torch.no_grad()
    def embed(self, x):
        """The online Conv-4 backbone features ``[M, D]`` (the authors' ``mode='feature'``)."""
        self.online.eval()
        return self.backbone(x.contiguous(memory_format=self.memory_format))


@hookimpl
def metabench_algorithms():
    return [PsCo]
