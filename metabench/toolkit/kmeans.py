"""Batched k-means on the device: many independent problems at once, k-means++ initialisation.

``kmeans(x, k, generator)`` clusters ``x`` ``[B, M, D]`` (``B`` problems of ``M`` points each) or ``[M, D]``.
Every random choice is drawn from the given ``torch.Generator``, so a result is reproducible on the same
device. Lloyd iterations use one batched matrix product per step for the distances and ``index_add_`` for
the means; an empty cluster is re-seeded at the point farthest from its centre (as scikit-learn does);
each problem stops on its own when its centres move less than ``tol`` times its mean per-dimension
variance (scikit-learn's criterion), so batched results equal per-problem ones.

Used by CACTUs (one problem per partition) and for clustering many small tasks at once.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

#: Upper bound on the bytes of one block of the point-to-centre distance matrix.
BLOCK_BYTES = 2**27


class KMeansResult(NamedTuple):
    """``labels`` int64 ``[B, M]``, ``centers`` ``[B, k, D]``, ``inertia`` ``[B]`` (sum of squared distances).

    For a 2-D input the leading ``B`` axis is absent.
    """

    labels: torch.Tensor
    centers: torch.Tensor
    inertia: torch.Tensor


def _assign(x: torch.Tensor, x2: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of each point: (squared distance ``[G, M]``, index ``[G, M]``), in row blocks."""
    g, m, _ = x.shape
    k = c.shape[1]
    c2 = (c * c).sum(-1).unsqueeze(1)                              # [G, 1, k]
    ct = c.transpose(1, 2)
    rows = max(1, BLOCK_BYTES // max(1, g * k * x.element_size()))
    dists, labels = [], []
    for s in range(0, m, rows):
        d = torch.baddbmm(c2, x[:, s:s + rows], ct, alpha=-2.0).add_(x2[:, s:s + rows, None])
        v, i = d.min(dim=2)
        dists.append(v.clamp_min_(0.0))
        labels.append(i)
    if len(dists) == 1:
        return dists[0], labels[0]
    return torch.cat(dists, 1), torch.cat(labels, 1)


def _sqdist(x: torch.Tensor, x2: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances ``[G, M, L]`` between points ``[G, M, D]`` and a few centres ``[G, L, D]``."""
    c2 = (c * c).sum(-1).unsqueeze(1)
    return torch.baddbmm(c2, x, c.transpose(1, 2), alpha=-2.0).add_(x2.unsqueeze(2)).clamp_min_(0.0)


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator,
                    trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007), ``[G, M, D]`` -> centres ``[G, k, D]``.

    As in scikit-learn, each new centre is the best (lowest resulting potential) of ``trials`` candidates
    (default ``2 + floor(ln k)``) drawn with probability proportional to the squared distance to the
    nearest centre chosen so far.
    """
    g, m, d = x.shape
    dev = x.device
    trials = trials or 2 + int(math.log(k))
    x2 = (x * x).sum(-1)
    rows = torch.arange(g, device=dev)
    first = torch.randint(0, m, (g,), generator=generator, device=dev)
    centers = torch.empty(g, k, d, dtype=x.dtype, device=dev)
    centers[:, 0] = x[rows, first]
    closest = _sqdist(x, x2, centers[:, :1]).squeeze(2)           # [G, M]
    for i in range(1, k):
        cum = closest.double().cumsum(1)                           # [G, M]
        total = cum[:, -1:]
        u = torch.rand(g, trials, generator=generator, device=dev, dtype=torch.float64)
        cand = torch.searchsorted(cum, u * total).clamp_(max=m - 1)  # [G, L]
        # a problem whose points all coincide with its centres has total 0: draw uniformly instead
        flat = (total <= 0).expand(-1, trials)
        cand = torch.where(flat, (u * m).long().clamp_(max=m - 1), cand)
        cx = x[rows[:, None], cand]                                # [G, L, D]
        pot = torch.minimum(closest.unsqueeze(2), _sqdist(x, x2, cx))  # [G, M, L]
        best = pot.sum(1).argmin(1)                                # [G]
        closest = pot[rows, :, best]
        centers[:, i] = cx[rows, best]
    return centers


def _lloyd(x: torch.Tensor, centers: torch.Tensor, iters: int, tol: float) -> KMeansResult:
    """Lloyd iterations on ``[G, M, D]`` from ``centers``; each problem stops at its own convergence."""
    g, m, d = x.shape
    k = centers.shape[1]
    dev = x.device
    x2 = (x * x).sum(-1)
    tol_abs = tol * x.var(dim=1, unbiased=False).mean(1)           # [G], scikit-learn's criterion
    centers = centers.clone()
    active = torch.arange(g, device=dev)
    xa, x2a, ta = x, x2, tol_abs
    for _ in range(iters):
        if active.numel() == 0:
            break
        ga = active.numel()
        c = centers[active]
        dist, lab = _assign(xa, x2a, c)
        flat = (lab + torch.arange(ga, device=dev).unsqueeze(1) * k).reshape(-1)
        sums = torch.zeros(ga * k, d, dtype=x.dtype, device=dev).index_add_(0, flat, xa.reshape(-1, d))
        counts = torch.zeros(ga * k, dtype=x.dtype, device=dev).index_add_(
            0, flat, torch.ones(flat.numel(), dtype=x.dtype, device=dev))
        new = (sums / counts.clamp_min(1.0).unsqueeze(1)).view(ga, k, d)
        empty = (counts == 0).view(ga, k)
        if bool(empty.any()):
            # re-seed each empty cluster at one of the points farthest from their centres
            most = int(empty.sum(1).max())
            far = dist.topk(most, dim=1).indices                   # [Ga, most]
            rank = (empty.cumsum(1) - 1).clamp_(min=0)             # r-th empty cluster -> r-th farthest
            pick = torch.gather(far, 1, rank.clamp(max=most - 1))  # [Ga, k]
            seeds = xa[torch.arange(ga, device=dev)[:, None], pick]
            new = torch.where(empty.unsqueeze(2), seeds, new)
        shift = ((new - c) ** 2).sum((1, 2))
        centers[active] = new
        done = shift <= ta
        if bool(done.any()):
            keep = ~done
            active, xa, x2a, ta = active[keep], xa[keep], x2a[keep], ta[keep]
    dist, labels = _assign(x, x2, centers)
    return KMeansResult(labels, centers, dist.sum(1))


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iters: int = 100, n_init: int = 1,
           tol: float = 1e-4, init: str | torch.Tensor = "k-means++",
           max_problems: int | None = None) -> KMeansResult:
    """Cluster each of ``B`` problems ``x`` ``[B, M, D]`` (or one ``[M, D]``) into ``k`` clusters.

    ``init`` is ``"k-means++"``, ``"random"`` (``k`` distinct points) or a tensor of initial centres
    ``[B, k, D]``. With ``n_init > 1`` the run of lowest inertia is kept per problem (a given tensor
    is a single start). ``max_problems`` bounds how many problems are processed together (default: as
    many as keep one copy of the points per group under about 512 MiB). Returns :class:`KMeansResult`
    ``(labels, centers, inertia)``.
    """
    single = x.dim() == 2
    if single:
        x = x.unsqueeze(0)
        if isinstance(init, torch.Tensor) and init.dim() == 2:
            init = init.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(f"kmeans expects [B, M, D] or [M, D], got {tuple(x.shape)}")
    b, m, d = x.shape
    if not 1 <= k <= m:
        raise ValueError(f"kmeans needs 1 <= k <= M (k={k}, M={m})")
    if not x.is_floating_point():
        x = x.float()
    if max_problems is None:
        max_problems = max(1, 2**29 // max(1, m * d * x.element_size()))
    out_l, out_c, out_i = [], [], []
    for s in range(0, b, max_problems):
        xs = x[s:s + max_problems]
        best: KMeansResult | None = None
        for _ in range(1 if isinstance(init, torch.Tensor) else n_init):
            if isinstance(init, torch.Tensor):
                c0 = init[s:s + max_problems].to(xs.dtype)
            elif init == "k-means++":
                c0 = kmeans_plusplus(xs, k, generator)
            elif init == "random":
                pick = torch.rand(xs.shape[0], m, generator=generator, device=x.device).argsort(1)[:, :k]
                c0 = xs[torch.arange(xs.shape[0], device=x.device)[:, None], pick]
            else:
                raise ValueError(f"unknown kmeans init {init!r}")
            res = _lloyd(xs, c0, iters, tol)
            if best is None:
                best = res
            else:
                better = res.inertia < best.inertia
                best = KMeansResult(torch.where(better[:, None], res.labels, best.labels),
                                    torch.where(better[:, None, None], res.centers, best.centers),
                                    torch.where(better, res.inertia, best.inertia))
        out_l.append(best.labels)
        out_c.append(best.centers)
        out_i.append(best.inertia)
    res = KMeansResult(torch.cat(out_l), torch.cat(out_c), torch.cat(out_i))
    if single:
        res = KMeansResult(res.labels[0], res.centers[0], res.inertia[0])
    return res
