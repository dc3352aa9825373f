"""Regions of scikit-learn's two sample photos as classes: colour photographs with no download.

``sklearn.datasets.load_sample_images`` ships two 427×640 photographs (a temple in China
and a flower). Each is cut into a ``rows × cols`` grid of regions and each region is one
class: its images are square patches of random side (``min_side``..``max_side`` pixels) at
random places inside the region, resized to ``image_size``. Classes are thus textures and
colours of one place (sky, roof, petals, leaves) seen at different scales and offsets, the
kind of task a user's own photographs pose, and unlike Omniglot or digits they are RGB.

Splits divide the regions: the same grid cells of both photos go to ``train`` (half the
cells, drawn once with a fixed generator, so every call and every seed agrees) and the
other cells to ``test``; neighbouring cells share texture, which is the realism of it.
``channels=1`` gives the patches in grey (ITU-R 601 luma, as Pillow's ``convert("L")``) for
models of one input channel. Patches are drawn with ``seed``, so a dataset is determined
by its options.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..params import Integer, OneOf
from .base import DATASETS, ClassDataset

#: Seeds the draw of the grid cells (row-major indices) that go to the training split, half of
#: them: fixed, so that ``seed`` (which draws the patches) never moves a region across splits.
_SPLIT_SEED = 20241207
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def photo_regions(rows: int, cols: int, per_class: int, min_side: int, max_side: int, image_size: int,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(images uint8 (n, 3, s, s), labels, class names)`` of every region of both photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = np.random.default_rng(seed)
    images, labels, names = [], [], []
    for p, (photo, filename) in enumerate(zip(photos.images, photos.filenames)):
        h, w = photo.shape[0] // rows, photo.shape[1] // cols
        if max_side > min(h, w):
            raise ConfigError(f"photo-regions: max_side {max_side} exceeds a region of {h}×{w} pixels "
                              f"({rows}×{cols} grid); lower max_side or use fewer rows and columns")
        stem = filename.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        for r in range(rows):
            for c in range(cols):
                patches = []
                for _ in range(per_class):
                    side = int(rng.integers(min_side, max_side + 1))
                    top = r * h + int(rng.integers(0, h - side + 1))
                    left = c * w + int(rng.integers(0, w - side + 1))
                    patch = torch.from_numpy(np.ascontiguousarray(photo[top:top + side, left:left + side]))
                    patch = patch.permute(2, 0, 1)[None].float()
                    # antialias: a patch shrunk 3-6 times would alias without it
                    patches.append(F.interpolate(patch, size=(image_size, image_size), mode="bilinear",
                                                 align_corners=False, antialias=True))
                labels += [len(names)] * per_class
                names.append(f"{stem}/r{r}c{c}")
                images.append(torch.cat(patches))
    pixels = torch.cat(images).round().clamp_(0, 255).to(torch.uint8)
    return pixels, torch.tensor(labels), names


@DATASETS.register("photo-regions")
def load_photo_regions(root=None, *, image_size: int = 32, channels: int = 3, rows: int = 3, cols: int = 4,
                       per_class: int = 40, min_side: int = 40, max_side: int = 100, seed: int = 0) -> ClassDataset:
    """The regions dataset (see the module docstring); ``root`` is unused (the photos ship with scikit-learn).

    :func:`fewshot.data.load_dataset` checks the options against ``_parameter_constraints``."""
    if min_side > max_side:
        raise ConfigError(f"photo-regions: min_side {min_side} is above max_side {max_side}; "
                          "give min_side ≤ max_side")
    images, labels, names = photo_regions(rows, cols, per_class, min_side, max_side, image_size, seed)
    if channels == 1:
        images = (images.float() * _LUMA).sum(1, keepdim=True).round().clamp_(0, 255).to(torch.uint8)
    cells = rows * cols
    train_cells = sorted(int(i) for i in np.random.default_rng(_SPLIT_SEED).permutation(cells)[:cells // 2])
    train = [p * cells + i for p in range(2) for i in train_cells]
    splits = {"train": train, "test": [i for i in range(2 * cells) if i not in train]}
    return ClassDataset("photo-regions", images, labels, names, splits,
                        {"grid": [rows, cols], "patch_sides": [min_side, max_side], "per_class": per_class})


load_photo_regions._parameter_constraints = {
    "image_size": Integer(8, 256), "channels": OneOf(1, 3), "rows": Integer(1, 8), "cols": Integer(1, 8),
    "per_class": Integer(1, 1000), "min_side": Integer(4, 400), "max_side": Integer(4, 400)}
