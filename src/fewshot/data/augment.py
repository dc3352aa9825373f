"""Small, label-preserving changes of images: for tiny support sets (:func:`jitter`), for
training episodes (:func:`augment_batch`, the trainer's ``augment`` setting) and for
test-time views (:func:`shifted_views`, ProtoNet's ``test_views``).

Training-time augmentation draws its random numbers on the host from NumPy's generator
seeded with ``(seed, step, AUGMENT_STREAM)``, a stream of its own: the same step of the
same run gets the same changes on every device and after a resume, and the episode
sampler's ``(seed, i)`` streams are untouched, so the episodes themselves are the same
with and without augmentation.

* ``shift``: every image moved by a whole number of pixels, up to :func:`max_shift`
  (1/14 of the side: 2 pixels at 28×28, 3 at 42×42, 4 at 56×56) in each direction, zero
  fill; characters stay whole, as Omniglot's drawings have wide margins.
* ``affine``: the affine distortions of Koch, Zemel and Salakhutdinov's siamese networks
  for Omniglot ("Siamese Neural Networks for One-shot Image Recognition", ICML Deep
  Learning Workshop 2015; no arXiv version): rotation in [-10°, 10°], shear in
  [-0.3, 0.3] and scale in [0.8, 1.2] on each axis, and the translation of ``shift``
  (theirs was ±2 pixels at 105×105), each of the four included with probability 1/2.

Both are one ``F.affine_grid`` / ``F.grid_sample`` call on the whole batch (nearest
neighbour for whole-pixel shifts, which moves pixels exactly; bilinear for affine), on
the device the images are on.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .episodes import Episode

#: The ``augment`` settings of a training config.
AUGMENTATIONS = ("none", "shift", "affine")
#: Third seed word of the augmentation stream, apart from the sampler's ``(seed, i)``.
AUGMENT_STREAM = 0x617567  # "aug"
#: Most test-time views: the image, then shifts right, left, down, up, and the four diagonals.
MAX_VIEWS = 9
_VIEW_DIRECTIONS = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1))


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` (``(..., h, w)``) moved ``dy`` pixels down and ``dx`` right, zero fill."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A slightly changed copy of one example: images (at least 8×8) are shifted by 1-2
    pixels with zero fill; other inputs get Gaussian noise of 5% of their spread."""
    if x.ndim == 3 and x.shape[-1] >= 8 and x.shape[-2] >= 8:
        dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator, device="cpu"))
        if dy == 0 and dx == 0:
            dx = 1
        return shift(x, dy, dx)
    # Drawn on the host from the CPU generator (the same noise on every device), then moved.
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return x + 0.05 * (x.std() if x.numel() > 1 else 1.0) * noise


def max_shift(size: int) -> int:
    """The largest shift, in pixels, of images ``size`` pixels a side: 1/14 of it, at least 1."""
    return max(1, round(size / 14))


def augmentable(image_shape: Sequence[int]) -> bool:
    """Whether inputs of ``image_shape`` are images these changes make sense for (at least 8×8)."""
    return len(image_shape) == 3 and min(int(image_shape[1]), int(image_shape[2])) >= 8


def _matrices(kind: str, n: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 2, 3)`` affine matrices in ``F.affine_grid``'s normalised coordinates."""
    limit = max_shift(min(h, w))
    # Whole pixels, as fractions of the normalised [-1, 1] span (2 units = the side).
    t = rng.integers(-limit, limit + 1, size=(n, 2)).astype(np.float64) * np.array([2.0 / w, 2.0 / h])
    a = np.tile(np.eye(2), (n, 1, 1))
    if kind == "affine":
        use = rng.random((n, 4)) < 0.5  # rotation, shear, scale, translation: each with probability 1/2
        angle = np.where(use[:, 0], rng.uniform(-10.0, 10.0, n), 0.0) * math.pi / 180
        shear = np.where(use[:, 1:2], rng.uniform(-0.3, 0.3, (n, 2)), 0.0)
        scale = np.where(use[:, 2:3], rng.uniform(0.8, 1.2, (n, 2)), 1.0)
        t = np.where(use[:, 3:4], t, 0.0)
        cos, sin = np.cos(angle), np.sin(angle)
        rotation = np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1)
        shearing = np.stack([np.stack([np.ones(n), shear[:, 0]], 1), np.stack([shear[:, 1], np.ones(n)], 1)], 1)
        a = rotation @ shearing @ (scale[:, :, None] * np.eye(2))
    return np.concatenate([a, t[:, :, None]], axis=2)


def augment_images(x: torch.Tensor, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """``x`` (``(n, c, h, w)`` floats), each image changed independently by ``kind``
    (``shift`` or ``affine``, see the module docstring), with numbers drawn from ``rng``."""
    if kind == "none" or len(x) == 0:
        return x
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}")
    n, _, h, w = x.shape
    theta = torch.as_tensor(_matrices(kind, n, h, w, rng), dtype=torch.float32).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="nearest" if kind == "shift" else "bilinear", padding_mode="zeros",
                         align_corners=False).to(x.dtype)


def augment_batch(episodes: Sequence[Episode], kind: str, seed: int, step: int) -> list[Episode]:
    """Training step ``step``'s episodes with their support and query images changed by
    ``kind``, from the stream ``(seed, step, AUGMENT_STREAM)``: the same on every call."""
    if kind == "none":
        return list(episodes)
    rng = np.random.default_rng((int(seed), int(step), AUGMENT_STREAM))
    return [dataclasses.replace(ep, support_x=augment_images(ep.support_x, kind, rng),
                                query_x=augment_images(ep.query_x, kind, rng)) for ep in episodes]


def view_shifts(views: int, size: int) -> list[tuple[int, int]]:
    """The ``views`` fixed shifts ``(dy, dx)`` of test-time views of images ``size`` pixels a
    side: the image itself, then half of :func:`max_shift` (at least 1 pixel) right, left,
    down, up and diagonally."""
    if not 1 <= views <= MAX_VIEWS:
        raise ValueError(f"views must be between 1 and {MAX_VIEWS}, got {views}")
    step = max(1, max_shift(size) // 2)
    return [(dy * step, dx * step) for dy, dx in _VIEW_DIRECTIONS[:views]]


def shifted_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """``(views * n, c, h, w)``: view ``v`` of every image of ``x`` at rows ``v*n .. v*n+n-1``
    (view 0 is ``x`` itself)."""
    shifts = view_shifts(views, min(x.shape[-2:]))
    return torch.cat([x if (dy, dx) == (0, 0) else shift(x, dy, dx) for dy, dx in shifts])
