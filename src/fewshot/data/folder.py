"""A user's own images: one sub-folder per class, in the layout of torchvision's ImageFolder.

::

    path/
        cat/  0001.jpg  0002.png ...
        dog/  ...

Class names are the sub-folder names, in sorted order; files with an image extension
PIL knows are read in sorted order (others, and hidden entries, are skipped). Every
image is converted to grayscale (``channels=1``) or RGB (``channels=3``) and resized to
``image_size`` × ``image_size`` (Lanczos; the aspect ratio is not kept, as in the
usual mini-ImageNet pipelines). There are no predefined splits: use split ``all``.

The decoded arrays are cached under the data root's cache folder, keyed by the size and
modification time of every file, so editing the folder invalidates the cache.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import CheckpointError, ConfigError, DataError
from ..io import load_tensors, save_tensors
from .base import ClassDataset
from .download import cache_dir, data_root
from .images import decode_image

_MODES = {1: "L", 3: "RGB"}


def load_folder(root: str | Path | None = None, *, path: str | Path | None = None, channels: int = 3,
                image_size: int = 84) -> ClassDataset:
    """Load the class folders under ``path`` as a :class:`ClassDataset` of uint8 images."""
    if path is None:
        raise ConfigError("the folder dataset needs its folder (one sub-folder of images per class): "
                          "--path DIR on the command line, path=DIR in Python")
    if str(channels) not in ("1", "3"):
        raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    channels = int(channels)
    if not 4 <= int(image_size) <= 512:
        raise ConfigError(f"folder image size must be between 4 and 512 pixels, got {image_size}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; give path= a folder with one sub-folder per class")
    classes = _class_files(folder)
    key = _fingerprint(folder, classes, channels, int(image_size))
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", folder.resolve().name)[:40]
    cache_file = cache_dir(data_root(root)) / f"folder-{label}-{key}.safetensors"
    images = _cached(cache_file, sum(len(f) for f in classes.values()), channels, int(image_size))
    if images is None:
        images = torch.from_numpy(np.stack([_decode(f, _MODES[channels], int(image_size))
                                            for files in classes.values() for f in files]))
        save_tensors(cache_file, {"images": images})
    labels = torch.repeat_interleave(torch.arange(len(classes)), torch.tensor([len(f) for f in classes.values()]))
    info = {"source": str(folder), "channels": channels}
    return ClassDataset("folder", images, labels, list(classes), {}, info)


def _cached(cache_file: Path, count: int, channels: int, size: int) -> torch.Tensor | None:
    """The cached images, or None: a missing cache, or a damaged one (only a cache: the
    folder is decoded again and the cache rewritten)."""
    if not cache_file.exists():
        return None
    try:
        images = load_tensors(cache_file).get("images")
    except CheckpointError:
        images = None
    if images is None or tuple(images.shape) != (count, channels, size, size) or images.dtype != torch.uint8:
        warnings.warn(f"{cache_file} is damaged; decoding the image folder again", stacklevel=3)
        return None
    return images


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """``{class name: sorted image files}``, refusing empty classes and fewer than two."""
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in sub.iterdir()
                       if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in extensions)
        if not files:
            raise DataError(f"class folder {sub} holds no images; add some or remove the folder")
        classes[sub.name] = files
    if len(classes) < 2:
        raise DataError(f"{folder} has {len(classes)} class sub-folder(s); few-shot tasks need at least 2, "
                        "one sub-folder of images per class")
    return classes


def _fingerprint(folder: Path, classes: dict[str, list[Path]], channels: int, image_size: int) -> str:
    digest = hashlib.sha256(f"folder-v1-{channels}-{image_size}".encode())
    for files in classes.values():
        for f in files:
            stat = f.stat()
            digest.update(f"{f.relative_to(folder).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode(path: Path, mode: str, size: int) -> np.ndarray:
    """One image as ``(channels, size, size)`` uint8."""
    array = decode_image(path, mode, size, str(path))
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
