"""scikit-learn's bundled handwritten digits: 1,797 8×8 images of 10 classes, no download.

The offline default. Few-shot splits divide the classes: digits 0-4 to ``train`` and
5-9 to ``test`` (there are too few classes for a separate validation split, so training
on digits keeps the last checkpoint). ``image_size`` upsamples bilinearly, e.g. to 28
to feed a model trained on Omniglot.

Five training classes are few for meta-learning; ``rotations=True`` adds each digit
rotated by 90, 180 and 270 degrees as classes of its own (the trick Omniglot papers
use), giving 20 training classes, and a ``val`` split: the 15 rotated test digits
(5-9 at 90, 180 and 270 degrees). Validation tasks are thus new classes, as test tasks
are, but their images are the test images rotated, so a setting chosen on ``val`` is
not independent of ``test``: checkpoint choice and tuning on it carry a small optimism
into test figures (there is no other class to spare among ten). The ``test`` split
stays the upright digits 5-9, so test tasks are the natural ones.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import DATASETS, ClassDataset


@DATASETS.register("digits")
def load_digits_dataset(root=None, *, image_size: int = 8, rotations: bool = False) -> ClassDataset:
    from sklearn.datasets import load_digits

    if not 8 <= int(image_size) <= 256:
        raise ConfigError(f"digits image size must be between 8 and 256 pixels, got {image_size}")
    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    if image_size != 8:
        upsampled = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear", align_corners=False)
        images = upsampled.round().clamp_(0, 255).to(torch.uint8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    if not rotations:
        splits = {"train": [0, 1, 2, 3, 4], "test": [5, 6, 7, 8, 9]}
        return ClassDataset("digits", images, labels, [str(d) for d in range(10)], splits)
    images = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
    labels = torch.cat([labels * 4 + k for k in range(4)])
    names = [f"{d}/rot{90 * k:03d}" for d in range(10) for k in range(4)]
    splits = {"train": [d * 4 + k for d in range(5) for k in range(4)],
              "val": [d * 4 + k for d in range(5, 10) for k in range(1, 4)],
              "test": [d * 4 for d in range(5, 10)]}
    return ClassDataset("digits", images, labels, names, splits, {"rotations": True})
