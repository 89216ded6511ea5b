"""Label-free embeddings fitted on the unlabeled meta-training images: raw pixels, PCA, or an autoencoder.

Shared by CACTUs (which clusters the embedding of the training images) and by the no-meta baselines (which
classify new tasks in it). :func:`fit_embedder` returns a function from float images ``[M, C, H, W]`` to
features ``[M, D]`` that applies to any images, not only the ones it was fitted on.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from metabench.toolkit.autoencoder import VERSION as AE_VERSION
from metabench.toolkit.autoencoder import ConvAutoencoder, fingerprint, train_autoencoder
from metabench.toolkit.datacache import cache_key, cached_tensors
from metabench.toolkit.episodes import to_float
from metabench.seeding import make_generator

EMBEDDINGS = ("pixels", "pca", "autoencoder")
Embedder = Callable[[torch.Tensor], torch.Tensor]


def pca_basis(x: torch.Tensor, dims: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and top principal directions ``[D, dims]`` of ``x`` ``[M, D]`` (not whitened).

    Exact (eigendecomposition of the covariance) for ``D <= 2048``, else a randomized range finder with
    power iterations drawn from ``generator``. Component signs are fixed (largest loading positive).
    """
    mean = x.mean(0)
    x = x - mean
    m, d = x.shape
    dims = min(dims, d, m)
    if d <= 2048:
        evals, evecs = torch.linalg.eigh((x.T @ x).double())
        basis = evecs[:, evals.argsort(descending=True)[:dims]].to(x.dtype)
    else:
        q = x @ torch.randn(d, dims + 10, generator=generator, device=x.device, dtype=x.dtype)
        for _ in range(4):
            q = x @ (x.T @ torch.linalg.qr(q).Q)
        q = torch.linalg.qr(q).Q
        basis = torch.linalg.svd(q.T @ x, full_matrices=False).Vh[:dims].T
    sign = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
    return mean, basis * sign


def pca_embed(x: torch.Tensor, dims: int, generator: torch.Generator) -> torch.Tensor:
    """Projections ``[M, dims]`` of ``x`` ``[M, D]`` on its own top principal components."""
    mean, basis = pca_basis(x, dims, generator)
    return (x - mean) @ basis


def fit_embedder(kind: str, images: torch.Tensor, seed: int, dims: int = 64, cache_dir: Path | None = None,
                 autoencoder_steps: int = 1500) -> Embedder:
    """Fit the embedding ``kind`` (``pixels``, ``pca`` or ``autoencoder``) on uint8 ``images`` without
    labels; the autoencoder's weights are cached per (seed, data fingerprint, options)."""
    if kind == "pixels":
        return lambda x: x.flatten(1)
    if kind == "pca":
        mean, basis = pca_basis(to_float(images).flatten(1), dims, make_generator(seed, images.device))
        return lambda x: (x.flatten(1) - mean) @ basis
    if kind != "autoencoder":
        raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {kind!r}")
    shape = tuple(images.shape[1:])

    def build() -> dict[str, torch.Tensor]:
        enc = train_autoencoder(images, images.device, seed, steps=autoencoder_steps, dim=dims)
        return {k: v.detach().cpu() for k, v in enc.state_dict().items()}

    if cache_dir is None:
        state = build()
    else:
        key = cache_key("autoencoder-encoder", AE_VERSION, seed=seed, data=fingerprint(images), dims=dims,
                        steps=autoencoder_steps)
        state = cached_tensors(Path(cache_dir), key, build)
    encoder = ConvAutoencoder(shape, dim=dims).encoder
    encoder.load_state_dict(state)
    encoder = encoder.to(images.device).eval()

    @torch.no_grad()
    def embed(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([encoder(x[s:s + 1024]) for s in range(0, x.shape[0], 1024)])

    return embed
