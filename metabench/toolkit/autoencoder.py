"""A small convolutional autoencoder, trained on unlabeled images, whose bottleneck serves as an embedding.

A stand-in for the learned embeddings CACTUs clusters (Hsu, Levine & Finn 2019 used BiGAN, ACAI and
DeepCluster): stride-2 convolutions down to a 7x7-ish map, a linear bottleneck of ``dim`` features, and a
mirrored decoder trained with binary cross-entropy on pixel intensities in [0, 1]. Training is seeded
(initialisation and mini-batches), so the same images, seed and options give the same encoder on one
device. :func:`metabench.toolkit.embeddings.fit_embedder` caches the trained encoder in a cache folder.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from metabench.toolkit.episodes import to_float
from metabench.seeding import make_generator, seeded

#: Bumped when the architecture or the training recipe changes (invalidates cached embeddings).
VERSION = 1


def fingerprint(images: torch.Tensor) -> str:
    """A short SHA-256 digest of a tensor's shape, dtype and bytes (identifies a data set in cache keys)."""
    t = images.detach().contiguous().cpu()
    h = hashlib.sha256(f"{tuple(t.shape)}{t.dtype}".encode())
    h.update(t.view(torch.uint8).reshape(-1).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class ConvAutoencoder(nn.Module):
    """Encoder: stride-2 3x3 convolutions (``width``, then ``2*width`` channels) while the side is at least
    8 (at most 3), then a linear map to ``dim``. Decoder: the mirror image with transposed convolutions,
    resized to the input's exact height and width. Outputs logits of pixel intensities.
    """

    def __init__(self, image_shape: tuple[int, int, int], dim: int = 64, width: int = 32) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape = (c, h, w)
        chans, side_h, side_w, layers = c, h, w, []
        while min(side_h, side_w) >= 8 and len(layers) < 3:
            out = width * min(2 ** len(layers), 2)
            layers += [nn.Conv2d(chans, out, 3, stride=2, padding=1), nn.ReLU()]
            chans, side_h, side_w = out, (side_h + 1) // 2, (side_w + 1) // 2
        if not layers:  # tiny images: one non-strided convolution
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
            chans = width
        self.map_shape = (chans, side_h, side_w)
        flat = chans * side_h * side_w
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, dim))
        downs = sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in layers)
        dec: list[nn.Module] = [nn.Linear(dim, flat), nn.ReLU(), nn.Unflatten(1, self.map_shape)]
        cin = chans
        for i in range(downs):
            last = i == downs - 1
            out = c if last else max(width, cin // 2)
            dec.append(nn.ConvTranspose2d(cin, out, 4, stride=2, padding=1))
            if not last:
                dec.append(nn.ReLU())
            cin = out
        if downs == 0:
            dec.append(nn.Conv2d(cin, c, 3, padding=1))
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits ``[B, C, H, W]`` of images ``x`` in [0, 1]."""
        y = self.decoder(self.encoder(x))
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y


def train_autoencoder(images: torch.Tensor, device: torch.device | str, seed: int, steps: int = 1500,
                      batch_size: int = 128, dim: int = 64, width: int = 32, lr: float = 1e-3) -> nn.Module:
    """Train a :class:`ConvAutoencoder` on uint8 images ``[M, C, H, W]`` for ``steps`` Adam steps and return
    its encoder (eval mode, on ``device``). Initialisation and mini-batches are seeded by ``seed``.
    """
    device = torch.device(device)
    images = images.to(device)
    with seeded(seed):
        model = ConvAutoencoder(tuple(images.shape[1:]), dim=dim, width=width)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = make_generator(seed, device)
    m = images.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, m, (min(batch_size, m),), generator=g, device=device)
        x = to_float(images[idx])
        loss = F.binary_cross_entropy_with_logits(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.encoder.eval()


@torch.no_grad()
def encode(encoder: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Embeddings ``[M, D]`` of uint8 images ``[M, C, H, W]``, computed in batches on the images' device."""
    return torch.cat([encoder(to_float(images[s:s + batch_size]))
                      for s in range(0, images.shape[0], batch_size)])
