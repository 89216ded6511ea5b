"""Batched image augmentations and index sampling on the device, driven by a passed ``torch.Generator``.

:func:`augment` transforms a whole batch ``[B, C, H, W]`` (float in [0, 1]) in one call: every geometric
change (shift, rotation, scale, shear, random resized crop, horizontal flip) of an image is folded into one
affine matrix, and the batch is warped by a single ``affine_grid``/``grid_sample``; then colour jitter
(brightness, contrast, saturation, hue -- a rotation of the chroma plane in YIQ space), random greyscale and
pixel dropout are applied as masked tensor ops. Nothing reads the global RNG.

Profiles (:data:`PROFILES`), overridable field by field (``augment(x, g, "handwriting", dropout=0.0)``);
a dataset plugin names the one suited to its images in its ``augmentation`` attribute:

* ``strokes`` -- UMTRA's Omniglot augmentation (Khodadadeh et al. 2019): random translation (up to 6 px
  at 28 px, here a fraction of the side) and random zeroing of pixels (each kept with probability 1/2, as
  in the authors' TensorFlow 2 code).
* ``handwriting`` / ``small_handwriting`` -- digits: a small shift, small affine warp (rotation, scale,
  shear) and light pixel dropout; ``small_handwriting`` is milder, for 8x8 images. A digit survives these
  as the same class, where the ``strokes`` profile's halving of the pixels and 6-pixel shifts often do not.
* ``natural`` -- colour images, the SimCLR recipe (Chen et al. 2020) that PsCo (Jang et al. 2023) trains
  on for miniImageNet, without blur: random resized crop (area 0.2-1, MoCo v2's scale; aspect 3/4-4/3),
  horizontal flip (p = 0.5), colour jitter applied with p = 0.8 (brightness, contrast and saturation
  factors in [0.6, 1.4], hue shift up to 0.1 of a turn), random greyscale (p = 0.2). Declared by the
  natural-image dataset plugins (miniImageNet, tieredImageNet, CIFAR-FS, FC100, CUB).
* ``none`` -- the identity.

:func:`sample_distinct` draws, for many rows at once, ``m`` distinct indices below a per-row count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Profile:
    """Strengths of each augmentation; a zero (or ``crop=1``) turns that augmentation off."""

    shift: float = 0.0       # max translation along each axis, as a fraction of the side
    rotate: float = 0.0      # max rotation, degrees
    scale: float = 0.0       # zoom factor drawn from [1 - scale, 1 + scale]
    shear: float = 0.0       # max shear angle, degrees
    crop: float = 1.0        # random resized crop: smallest area fraction kept (1 = no crop)
    hflip: float = 0.0       # probability of a horizontal flip
    jitter: float = 0.0      # brightness and contrast factors drawn from [1 - jitter, 1 + jitter]
    saturation: float = 0.0  # saturation factor drawn from [1 - saturation, 1 + saturation] (colour images)
    hue: float = 0.0         # hue rotation drawn from [-hue, hue] turns (colour images)
    jitter_p: float = 1.0    # probability that an image gets the colour jitter at all
    grayscale: float = 0.0   # probability of turning a colour image grey
    dropout: float = 0.0     # probability of zeroing each pixel (all channels)
    padding: str = "zeros"   # grid_sample padding outside the image: zeros, border or reflection

    @property
    def geometric(self) -> bool:
        """Whether any spatial warp is enabled."""
        return bool(self.shift or self.rotate or self.scale or self.shear or self.crop < 1 or self.hflip)


PROFILES: dict[str, Profile] = {
    "none": Profile(),
    "strokes": Profile(shift=6 / 28, dropout=0.5),
    "handwriting": Profile(shift=3 / 28, rotate=15.0, scale=0.1, shear=10.0, dropout=0.1),
    "small_handwriting": Profile(shift=1 / 8, rotate=10.0, scale=0.1, shear=5.0, dropout=0.05),
    "natural": Profile(crop=0.2, hflip=0.5, jitter=0.4, saturation=0.4, hue=0.1, jitter_p=0.8, grayscale=0.2,
                       padding="border"),
}

_GREY = (0.299, 0.587, 0.114)
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
_UNIFORMS = 13  # uniforms drawn per image, whatever the profile (keeps streams comparable)


def get_profile(profile: str | Profile, **overrides: float | str) -> Profile:
    """The named profile (or ``profile`` itself) with ``overrides`` applied.

    Unknown profile names or fields raise ``ValueError``.
    """
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"unknown augmentation profile {profile!r}; known: {sorted(PROFILES)}")
        profile = PROFILES[profile]
    known = {f.name for f in fields(Profile)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown augmentation field(s) {bad}; known: {sorted(known)}")
    return replace(profile, **overrides) if overrides else profile


def auto_profile(image_shape: tuple[int, int, int], declared: str = "") -> str:
    """The profile the dataset declares (``RunContext.augmentation``, from the dataset plugin's
    ``augmentation``) if it names one, else by the ``(C, H, W)`` of the images: ``natural`` if colour,
    ``small_handwriting`` if <= 16 px, else ``strokes``."""
    if declared in PROFILES:
        return declared
    c, h, w = image_shape
    if c == 3:
        return "natural"
    return "small_handwriting" if max(h, w) <= 16 else "strokes"


def affine_params(u: torch.Tensor, p: Profile) -> torch.Tensor:
    """Sampling matrices ``[B, 2, 3]`` (output -> input, normalised coordinates) from uniforms ``u``
    ``[B, >=10]`` (columns 0-9: rotation, shear, zoom, flip, shift x/y, crop area, ratio, centre x/y)."""
    b = u.shape[0]
    s = lambda col: 2.0 * u[:, col] - 1.0  # noqa: E731  uniform in [-1, 1)
    theta = math.radians(p.rotate) * s(0)
    shear = math.radians(p.shear) * s(1)
    zoom = 1.0 + p.scale * s(2)
    flip = torch.where(u[:, 3] < p.hflip, -1.0, 1.0)
    cos, sin, tan = torch.cos(theta), torch.sin(theta), torch.tan(shear)
    # linear part: rotation @ shear @ flip / zoom
    a11, a12 = cos * flip / zoom, (cos * tan - sin) / zoom
    a21, a22 = sin * flip / zoom, (sin * tan + cos) / zoom
    tx, ty = -2.0 * p.shift * s(4), -2.0 * p.shift * s(5)
    # random resized crop: area in [crop, 1], aspect ratio in [3/4, 4/3] (log-uniform)
    area = p.crop + (1.0 - p.crop) * u[:, 6]
    ratio = torch.exp(math.log(4 / 3) * s(7)) if p.crop < 1 else torch.ones_like(area)
    cw, ch = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
    cx, cy = (1.0 - cw) * s(8), (1.0 - ch) * s(9)
    theta_m = torch.stack([torch.stack([cw * a11, cw * a12, cw * tx + cx], 1),
                           torch.stack([ch * a21, ch * a22, ch * ty + cy], 1)], 1)
    return theta_m.view(b, 2, 3)


def augment(x: torch.Tensor, generator: torch.Generator, profile: str | Profile = "strokes",
            **overrides: float | str) -> torch.Tensor:
    """Randomly augmented copies of float images ``x`` ``[B, C, H, W]`` in [0, 1] (same shape and range).

    One vectorised pass for the whole batch; randomness only from ``generator`` (on ``x``'s device).
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"augment expects float images [B, C, H, W], got {x.dtype} {tuple(x.shape)}")
    p = get_profile(profile, **overrides)
    b, c, h, w = x.shape
    dev = x.device
    u = torch.rand(b, _UNIFORMS, generator=generator, device=dev, dtype=x.dtype)
    colour = c == 3 and bool(p.saturation or p.hue)
    # drawn only by profiles that use them, so the streams of the others stay as they were
    v = torch.rand(b, 3, generator=generator, device=dev, dtype=x.dtype) if colour or p.jitter_p < 1 else None
    out = x
    if p.geometric:
        grid = F.affine_grid(affine_params(u, p), [b, c, h, w], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode=p.padding, align_corners=False)
    before = out
    if p.jitter:
        bright = 1.0 + p.jitter * (2.0 * u[:, 10] - 1.0)
        contrast = 1.0 + p.jitter * (2.0 * u[:, 11] - 1.0)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - mean) * contrast.view(b, 1, 1, 1) + mean) * bright.view(b, 1, 1, 1)
    if colour:
        out = _saturation_hue(out, 1.0 + p.saturation * (2.0 * v[:, 0] - 1.0), p.hue * (2.0 * v[:, 1] - 1.0))
    if v is not None and p.jitter_p < 1:
        out = torch.where((v[:, 2] < p.jitter_p).view(b, 1, 1, 1), out, before)
    if p.grayscale and c == 3:
        grey = (out * torch.tensor(_GREY, device=dev, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
        to_grey = (u[:, 12] < p.grayscale).view(b, 1, 1, 1)
        out = torch.where(to_grey, grey.expand_as(out), out)
    if p.dropout:
        keep = torch.rand(b, 1, h, w, generator=generator, device=dev, dtype=x.dtype) >= p.dropout
        out = out * keep
    return out.clamp(0.0, 1.0)


def _saturation_hue(x: torch.Tensor, saturation: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """RGB images ``[B, 3, H, W]`` with their chroma scaled by ``saturation`` ``[B]`` and rotated by
    ``turns`` ``[B]`` of a full turn (a hue shift), as one per-image 3x3 colour matrix in YIQ space."""
    yiq = torch.tensor(_YIQ, device=x.device, dtype=x.dtype)
    angle = 2 * math.pi * turns
    cos, sin = torch.cos(angle) * saturation, torch.sin(angle) * saturation
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                       torch.stack([zero, sin, cos], 1)], 1)                      # [B, 3, 3]
    m = torch.linalg.inv(yiq) @ rot @ yiq
    return torch.einsum("bij,bjhw->bihw", m, x)


def sample_distinct(counts: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """For each entry ``n`` of int ``counts`` (any shape ``S``, every ``n >= m``), ``m`` distinct integers in
    ``0..n-1`` drawn uniformly without replacement, in random order: int64 ``[*S, m]``.

    Vectorised Floyd's algorithm (``m`` small steps, whatever ``n``), then a random permutation of the
    ``m`` picks. Costs ``O(|S| m^2)``, independent of the counts, so sampling 5 of 82240 images is cheap.
    """
    counts = counts.to(torch.int64)
    dev = counts.device
    if m == 0:
        return torch.empty(*counts.shape, 0, dtype=torch.int64, device=dev)
    if bool((counts < m).any()):
        raise ValueError(f"sample_distinct: some count is below m={m}")
    u = torch.rand(*counts.shape, m, generator=generator, device=dev, dtype=torch.float64)
    picks = torch.empty(*counts.shape, m, dtype=torch.int64, device=dev)
    for i in range(m):
        top = counts - m + i                                   # Floyd: draw t in 0..top
        t = torch.minimum((u[..., i] * (top + 1).double()).long(), top)
        if i:
            seen = (picks[..., :i] == t.unsqueeze(-1)).any(-1)
            t = torch.where(seen, top, t)
        picks[..., i] = t
    order = torch.rand(*counts.shape, m, generator=generator, device=dev).argsort(-1)
    return picks.gather(-1, order)
