"""Images as users have them -> the tensors a trained model takes.

A model's :class:`Preprocessing` is what its training data looked like: image shape
``(channels, height, width)`` and value range (``[0, 1]`` for every image dataset:
uint8 pixels divided by 255). It is stored with the run and with an exported model, so
new images are prepared the same way:

* file paths and PIL images are decoded by the one bounded decoder of the dataset loaders
  (:mod:`fewshot.data.images`: at most 8,192 × 8,192 pixels, checked from the header
  before decoding; 16-bit, 32-bit and float images scaled to 8 bits, not clipped),
  converted to grey (``L``) or RGB and resized with Lanczos filtering, exactly as the
  ``folder`` dataset decodes training images;
* NumPy arrays and torch tensors may be one batch ``(n, h, w)``, ``(n, h, w, c)`` or
  ``(n, c, h, w)``, or a list of single images ``(h, w)``, ``(h, w, c)`` or
  ``(c, h, w)``; uint8 (or signed integer) pixels are divided by 255, uint16, uint32 and
  uint64 ones by their dtype's maximum (65535, ...: as 16-bit image files are scaled),
  float pixels must already lie in the model's range; they are resized bilinearly
  (antialiased);
* channels are matched: RGB to grey by ITU-R 601-2 luma (as PIL's ``L``), grey to RGB
  by repetition, an alpha channel dropped.

Anything else is a :class:`~fewshot.errors.DataError` saying what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError

LUMA = (0.299, 0.587, 0.114)
CHANNEL_COUNTS = (1, 3, 4)
#: Unsigned integer pixels wider than 8 bits, and the value each maps to white.
WIDE_UNSIGNED = {torch.uint16: 65535.0, torch.uint32: 4294967295.0, torch.uint64: 18446744073709551615.0}


@dataclass(frozen=True)
class Preprocessing:
    """What a model's inputs are: ``(channels, height, width)`` and the value range."""

    channels: int
    height: int
    width: int
    value_range: tuple[float, float] = (0.0, 1.0)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def pixels(self) -> bool:
        """Whether the model takes images scaled to [0, 1] (so uint8 pixels and files are accepted)."""
        return tuple(self.value_range) == (0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "height": self.height, "width": self.width,
                "value_range": list(self.value_range),
                "resize": "Lanczos for files and PIL images, bilinear (antialiased) for arrays",
                "grey": "ITU-R 601-2 luma from RGB", "scale": "uint8 pixels / 255"}

    @classmethod
    def from_dict(cls, values: Any) -> "Preprocessing":
        try:
            lo, hi = (float(v) for v in values.get("value_range", (0.0, 1.0)))
            p = cls(int(values["channels"]), int(values["height"]), int(values["width"]), (lo, hi))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"the model's preprocessing record is damaged ({e!r})") from None
        if min(p.image_shape) < 1 or not lo < hi:
            raise DataError(f"the model's preprocessing record is damaged ({values})")
        return p


def to_tensor(images: Any, prep: Preprocessing, what: str = "images") -> torch.Tensor:
    """``images`` (see the module docstring) as a float tensor ``(n, c, h, w)`` for a model of ``prep``."""
    if isinstance(images, (str, Path)):
        raise DataError(f"{what}: give a list of images (e.g. [\"{images}\"]), not one path; for a folder of "
                        "class sub-folders use fewshot.image_folder(path)")
    if isinstance(images, (np.ndarray, torch.Tensor)):
        batch = _batch(_as_array(images, what), prep, what)
        return _finish(batch, prep, what, resize="bilinear")
    if _is_pil(images):
        raise DataError(f"{what}: give a list of images ([image]), not one PIL image")
    if not isinstance(images, (list, tuple)):
        raise DataError(f"{what}: expected a list of file paths, PIL images or arrays, or one array "
                        f"(n, h, w), (n, h, w, c) or (n, c, h, w); got {type(images).__name__}")
    if not images:
        raise DataError(f"{what}: no images given")
    return torch.cat([_one(item, prep, f"{what}[{i}]") for i, item in enumerate(images)])


def _is_pil(obj: Any) -> bool:
    from PIL import Image

    return isinstance(obj, Image.Image)


def _as_array(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype == object or x.dtype.kind not in "biuf":
            raise DataError(f"{what}: expected numbers, got an array of {x.dtype}")
        # A read-only array (np.asarray of a PIL image, a memory map) is copied: torch cannot
        # share it without a warning, and the tensor must not write through to the caller's data.
        x = torch.from_numpy(np.ascontiguousarray(x) if x.flags.writeable else x.copy())
    x = x.detach().cpu()
    if x.dtype == torch.bool or x.is_complex():
        raise DataError(f"{what}: expected pixel values (uint8 0-255 or float), got {x.dtype}")
    return x


def _batch(x: torch.Tensor, prep: Preprocessing, what: str) -> torch.Tensor:
    """A batch array in (n, c, h, w), from any of the layouts the docstring lists."""
    if x.ndim == 2 and prep.height == prep.width == 1 and x.shape[1] == prep.channels:
        return x[:, :, None, None]  # feature vectors of a model trained on (n, features) arrays
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] in CHANNEL_COUNTS:
            return x
        if x.shape[-1] in CHANNEL_COUNTS:
            return x.permute(0, 3, 1, 2)
        raise DataError(f"{what}: cannot tell the channels of shape {tuple(x.shape)}; expected (n, c, h, w) or "
                        f"(n, h, w, c) with c of 1, 3 or 4")
    shape = f"(n, {prep.channels})" if prep.height == prep.width == 1 else "(n, h, w), (n, h, w, c) or (n, c, h, w)"
    raise DataError(f"{what}: expected a batch {shape}; got shape {tuple(x.shape)} "
                    "(a single image goes in a list: [image])")


def _one(item: Any, prep: Preprocessing, what: str) -> torch.Tensor:
    """One list item as (1, c, h, w)."""
    if isinstance(item, (str, Path)):
        return _from_pil(_open(Path(item), what), prep, what)
    if _is_pil(item):
        return _from_pil(item, prep, what)
    if isinstance(item, (np.ndarray, torch.Tensor)):
        x = _as_array(item, what)
        if x.ndim == 2:
            x = x[None]
        elif x.ndim == 3 and x.shape[0] not in CHANNEL_COUNTS and x.shape[-1] in CHANNEL_COUNTS:
            x = x.permute(2, 0, 1)
        elif x.ndim != 3 or x.shape[0] not in CHANNEL_COUNTS:
            raise DataError(f"{what}: expected one image (h, w), (h, w, c) or (c, h, w); got shape {tuple(x.shape)}")
        return _finish(x[None], prep, what, resize="bilinear")
    raise DataError(f"{what}: expected a file path, a PIL image or an array, got {type(item).__name__}")


def _open(path: Path, what: str):
    from .data.images import open_image

    if not path.is_file():
        raise DataError(f"{what}: image file {path} does not exist")
    return open_image(path, f"{what}: {path}")


def _from_pil(image, prep: Preprocessing, what: str) -> torch.Tensor:
    from .data.images import to_pixels

    if not prep.pixels:
        raise DataError(f"{what}: this model was trained on arrays with values in {list(prep.value_range)}, "
                        "not on images; give arrays like its training data")
    if prep.channels not in (1, 3):
        raise DataError(f"{what}: this model takes {prep.channels}-channel inputs; give arrays, not images")
    # Decoded as the training loaders decode (16-bit, 32-bit and float images scaled, not clipped).
    array = to_pixels(image, "L" if prep.channels == 1 else "RGB", (prep.width, prep.height), what)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())[None].float().div_(255.0)


def _finish(x: torch.Tensor, prep: Preprocessing, what: str, resize: str) -> torch.Tensor:
    """(n, c', h', w') of any numeric dtype -> float (n, c, h, w) in the model's range."""
    if x.shape[0] == 0:
        raise DataError(f"{what}: no images given")
    if x.dtype in WIDE_UNSIGNED:
        if not prep.pixels:
            raise DataError(f"{what}: this model takes float values in {list(prep.value_range)}, got integers")
        # Scaled by the dtype's range, as a 16-bit image file is: 65535 is white, as 255 is in uint8.
        x = x.to(torch.float64).div_(WIDE_UNSIGNED[x.dtype]).float()
    elif not x.dtype.is_floating_point:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{what}: integer pixels must lie in 0-255, got {lo}..{hi}")
        if not prep.pixels:
            raise DataError(f"{what}: this model takes float values in {list(prep.value_range)}, got integers")
        x = x.float().div_(255.0)
    else:
        x = x.float()
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{what}: contains NaN or infinite values")
        lo, hi = prep.value_range
        slack = 1e-3 * (hi - lo)
        if float(x.min()) < lo - slack or float(x.max()) > hi + slack:
            hint = " (0-255 pixels? pass them as uint8, or divide by 255)" if prep.pixels and float(x.max()) > 1.5 else ""
            raise DataError(f"{what}: float values must lie in [{lo:g}, {hi:g}] as in training, got "
                            f"{float(x.min()):.3g}..{float(x.max()):.3g}{hint}")
    x = _match_channels(x, prep.channels, what)
    if tuple(x.shape[2:]) != (prep.height, prep.width):
        if prep.height == prep.width == 1:
            raise DataError(f"{what}: expected {prep.channels} features per example, got shape {tuple(x.shape[1:])}")
        x = F.interpolate(x, size=(prep.height, prep.width), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp_(*prep.value_range)
    return x.contiguous()


def _match_channels(x: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    have = x.shape[1]
    if have == channels:
        return x
    if have == 4 and channels in (1, 3):  # drop alpha
        x, have = x[:, :3], 3
        if channels == 3:
            return x
    if have == 3 and channels == 1:
        return (x * torch.tensor(LUMA, dtype=x.dtype)[None, :, None, None]).sum(1, keepdim=True)
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    raise DataError(f"{what}: this model takes {channels}-channel images, got {have} channels")


def image_folder(path: str | Path) -> tuple[list[Path], list[str]]:
    """Image files and their labels from a folder of class sub-folders (``path/cat/1.png`` ->
    label ``"cat"``), in sorted order: a support set for :meth:`FewShotClassifier.fit`."""
    from .data.folder import class_files

    classes = class_files(Path(path).expanduser(), min_classes=1)
    paths = [f for files in classes.values() for f in files]
    labels = [name for name, files in classes.items() for _ in files]
    return paths, labels


def image_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files: a folder's (sorted, recursive into sub-folders; hidden entries skipped), or the given files."""
    from .data.folder import image_extensions

    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    extensions = image_extensions()
    files: list[Path] = []
    for item in items:
        item = Path(item).expanduser()
        if item.is_dir():
            found = sorted(f for f in item.rglob("*") if f.is_file() and f.suffix.lower() in extensions
                           and not any(part.startswith(".") for part in f.relative_to(item).parts))
            if not found:
                raise DataError(f"{item} holds no image files")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item} is neither an image file nor a folder")
    return files


__all__ = ["Preprocessing", "image_files", "image_folder", "to_tensor"]
