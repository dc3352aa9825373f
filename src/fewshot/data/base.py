"""The one in-memory form every class-labelled dataset takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..registry import Registry

#: The recorded dataset name of a run trained on in-memory data: ``memory:NAME``.
IN_MEMORY = "memory:"

#: Every loadable dataset by name: ``loader(root, **options) -> ClassDataset``. A loader
#: registers where it is defined (``@DATASETS.register("digits")``); its keyword
#: parameters are its options (``--dataset-option``), checked against its
#: ``_parameter_constraints`` where it declares them, else against its defaults' types.
DATASETS: Registry = Registry("dataset", "`fewshot data list` lists them")


@dataclass
class ClassDataset:
    """Images grouped by class, with named splits over the classes.

    ``images`` is ``(n, channels, height, width)``, either ``uint8`` (0-255, the compact
    form every built-in dataset uses) or ``float32``; episodes turn it into floats in
    [0, 1]. Images are sorted by class so each class is one contiguous block, which is
    what makes episode sampling a handful of array operations.

    ``splits`` maps a split name (``train``, ``val``, ``test`` ...) to the class ids it
    holds; few-shot splits divide classes, never the images of a class.

    ``class_groups``, when given, names a group for every class (Omniglot: its
    alphabet), so that episodes can be drawn within one group
    (:class:`~fewshot.data.episodes.EpisodeSampler`'s ``within_groups``).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    splits: dict[str, list[int]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    #: How to load it again: ``{"name": ..., "options": {...}}`` when it was loaded by
    #: name (:func:`fewshot.data.load_dataset` sets it); ``None`` for data built in memory.
    origin: dict | None = None
    #: One group name per class (e.g. Omniglot's alphabets), or ``None`` when the data has none.
    class_groups: list[str] | None = None
    #: ``images`` copied to other devices, once each (see :meth:`images_on`).
    _on_device: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DataError(
                f"{self.name}: images must be (n, channels, height, width), got shape {tuple(self.images.shape)}"
            )
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise DataError(f"{self.name}: images must be uint8 or float32, got {self.images.dtype}")
        if len(self.labels) != len(self.images):
            raise DataError(
                f"{self.name}: {len(self.images)} images but {len(self.labels)} labels; give one label per image"
            )
        self.labels = self.labels.to(torch.int64)
        n_classes = len(self.class_names)
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= n_classes):
            raise DataError(f"{self.name}: labels must lie in 0..{n_classes - 1}")
        if len(self.labels) > 1 and bool((self.labels[1:] < self.labels[:-1]).any()):
            order = torch.argsort(self.labels, stable=True)
            self.images, self.labels = self.images[order], self.labels[order]
        if self.class_groups is not None:
            self.class_groups = [str(g) for g in self.class_groups]
            if len(self.class_groups) != n_classes:
                raise DataError(f"{self.name}: {n_classes} classes but {len(self.class_groups)} class groups; "
                                "give one group per class")
        counts = torch.bincount(self.labels, minlength=n_classes)
        self.class_counts = counts.numpy().astype(np.int64)
        self.class_offsets = np.concatenate([[0], np.cumsum(self.class_counts)[:-1]]).astype(np.int64)
        for split, classes in self.splits.items():
            bad = [c for c in classes if not 0 <= c < n_classes]
            if bad:
                raise DataError(f"{self.name}: split '{split}' names unknown class ids {bad[:5]}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_classes(self, split: str | None) -> list[int]:
        """Class ids of ``split``; ``None`` or ``"all"`` means every class."""
        if split in (None, "all"):
            return list(range(self.num_classes))
        if split not in self.splits:
            known = ", ".join(sorted(self.splits)) or "none"
            raise ConfigError(f"{self.name} has no split '{split}'; its splits are: {known}")
        return list(self.splits[split])

    def images_on(self, device: torch.device | str | None) -> torch.Tensor:
        """``images`` on ``device``, copied there once and kept: every sampler of this
        dataset on that device gathers its episodes from the one copy, in the compact
        dtype (uint8 for built-in datasets: a quarter of float32's memory)."""
        device = torch.device("cpu") if device is None else torch.device(device)
        if device == self.images.device:
            return self.images
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = self.images.to(device)
        return self._on_device[key]

    def class_images(self, class_id: int) -> torch.Tensor:
        start = int(self.class_offsets[class_id])
        return self.images[start : start + int(self.class_counts[class_id])]

    def summary(self) -> dict:
        """Classes and images per split, for ``fewshot data info``."""
        rows = {}
        for split in ["all", *self.splits]:
            classes = self.split_classes(split)
            counts = self.class_counts[classes] if classes else np.zeros(0, dtype=np.int64)
            rows[split] = {
                "classes": len(classes),
                "images": int(counts.sum()),
                "min_per_class": int(counts.min()) if len(counts) else 0,
                "max_per_class": int(counts.max()) if len(counts) else 0,
            }
        return {"name": self.name, "image_shape": list(self.image_shape), "splits": rows, **self.info}


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 0-255 images to float32 in [0, 1]; float images pass through."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).mul_(1.0 / 255.0)
    return images


def from_arrays(
    x: np.ndarray | torch.Tensor,
    y: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    name: str = "arrays",
    class_names: Sequence[str] | None = None,
    splits: dict[str, list[int]] | None = None,
) -> ClassDataset:
    """A :class:`ClassDataset` from in-memory arrays.

    ``x`` is ``(n, h, w)``, ``(n, c, h, w)`` or ``(n, features)`` (features become a
    1×1 image with that many channels, so MLP backbones see them flat). ``y`` holds any
    hashable labels; they are numbered in sorted order.
    """
    x_t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    y_arr = np.asarray(y.cpu().numpy() if isinstance(y, torch.Tensor) else y)
    if x_t.ndim < 2 or x_t.ndim > 4:
        raise DataError(f"{name}: x must be (n, features), (n, h, w) or (n, c, h, w); got shape {tuple(x_t.shape)}")
    if y_arr.ndim != 1 or len(y_arr) != len(x_t):
        raise DataError(f"{name}: x has {len(x_t)} rows but y has shape {y_arr.shape}; give one label per row")
    if x_t.dtype != torch.uint8:
        x_t = x_t.to(torch.float32)
        if not bool(torch.isfinite(x_t).all()):
            raise DataError(f"{name}: x contains NaN or infinite values; clean or impute them first")
    if x_t.ndim == 2:
        x_t = x_t[:, :, None, None]
    elif x_t.ndim == 3:
        x_t = x_t[:, None]
    if y_arr.dtype.kind in "fc" and not np.isfinite(y_arr).all():
        raise DataError(f"{name}: y contains NaN or infinite labels; every row needs a label")
    try:
        values, y_ids = np.unique(y_arr, return_inverse=True)
    except TypeError as e:  # e.g. None among numbers: labels that cannot be sorted
        raise DataError(f"{name}: y labels cannot be sorted ({e}); give labels of one type") from None
    names = [str(v) for v in values] if class_names is None else list(class_names)
    if len(names) != len(values):
        raise DataError(f"{name}: {len(values)} distinct labels but {len(names)} class names")
    ids = {split: _class_ids(name, split, classes, values.tolist(), names) for split, classes in (splits or {}).items()}
    return ClassDataset(name, x_t.contiguous(), torch.as_tensor(y_ids, dtype=torch.int64), names, ids)


def _class_ids(name: str, split: str, classes, values: list, names: list[str]) -> list[int]:
    """A split given by labels (as in ``y``), class names, or class ids 0..n-1, as class ids."""
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise DataError(f"{name}: split '{split}' must be a list of classes, got {type(classes).__name__}")
    classes = list(classes.tolist() if isinstance(classes, (np.ndarray, torch.Tensor)) else classes)
    by_label = {v: i for i, v in enumerate(values)}
    by_name = {n: i for i, n in enumerate(names)}
    out = []
    for c in classes:
        if isinstance(c, (int, np.integer, str)) and c in by_label:
            out.append(by_label[c])
        elif isinstance(c, str) and c in by_name:
            out.append(by_name[c])
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(values) \
                and not any(isinstance(v, (int, np.integer)) for v in values):
            out.append(int(c))  # a class id, when the labels themselves are not numbers
        else:
            raise DataError(f"{name}: split '{split}' names {c!r}, which is neither a label in y nor a class name; "
                            f"labels: {', '.join(map(repr, values[:8]))}{' ...' if len(values) > 8 else ''}")
    return out
