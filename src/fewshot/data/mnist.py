"""MNIST (LeCun, Bottou, Bengio & Haffner, 1998): 70,000 28×28 handwritten digits, 10 classes.

Read from the four official idx files under ``<data root>/mnist/`` (gzipped as
distributed, or already gunzipped), downloaded with their checksums when missing.
The official train and test sets are pooled: few-shot splits divide the classes, not
the images, so digits 0-4 go to ``train`` and 5-9 to ``test`` (as for ``digits``).
``image_size`` resizes bilinearly (antialiased when shrinking).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..io import read_bounded
from . import archives
from .archives import ReadBudget
from .base import DATASETS, ClassDataset
from .download import data_root, ensure_files

# The original yann.lecun.com host now refuses most downloads; this mirror serves
# byte-identical files (the MD5s are those of the original distribution).
BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FILES = {
    "train-images-idx3-ubyte.gz": (BASE_URL + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte.gz": (BASE_URL + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte.gz": (BASE_URL + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte.gz": (BASE_URL + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f06629f"),
}
SETS = (("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))
_UBYTE = 0x08  # idx type code of unsigned bytes, the only type MNIST uses


@DATASETS.register("mnist")
def load_mnist(root: str | Path | None = None, *, image_size: int = 28) -> ClassDataset:
    """Load MNIST as a :class:`ClassDataset` of ``(70000, 1, s, s)`` uint8 images."""
    if not 4 <= int(image_size) <= 256:
        raise ConfigError(f"MNIST image size must be between 4 and 256 pixels, got {image_size}")
    folder = data_root(root) / "mnist"
    paths = _sources(folder)
    images, labels = [], []
    for image_name, label_name in SETS:
        x = read_idx(paths[image_name], ndim=3)
        y = read_idx(paths[label_name], ndim=1)
        if len(x) != len(y):
            raise DataError(f"{paths[image_name]} holds {len(x)} images but {paths[label_name]} {len(y)} labels; "
                            "replace them with the official files")
        if len(y) and int(y.max()) > 9:
            raise DataError(f"{paths[label_name]} holds label {int(y.max())}; MNIST labels are 0-9")
        images.append(x)
        labels.append(y)
    images_t = _resized(torch.from_numpy(np.concatenate(images))[:, None], int(image_size))
    labels_t = torch.from_numpy(np.concatenate(labels).astype(np.int64))
    splits = {"train": [0, 1, 2, 3, 4], "test": [5, 6, 7, 8, 9]}
    return ClassDataset("mnist", images_t, labels_t, [str(d) for d in range(10)], splits, {"source": str(folder)})


def _sources(folder: Path) -> dict[str, Path]:
    """Each official file, or its gunzipped copy, downloading what is missing."""
    found = {name: folder / name.removesuffix(".gz") for name in FILES}
    missing = {name: FILES[name] for name, raw in found.items() if not raw.exists()}
    if missing:
        ensure_files(folder, missing, dataset="mnist")
        found.update({name: folder / name for name in missing})
    return found


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte idx file (gzipped or not) as a ``uint8`` array of ``ndim`` dimensions."""
    try:
        if path.suffix == ".gz":
            # Bounded: a gzip "bomb" inflating past any MNIST file is refused, not read whole.
            with gzip.open(path, "rb") as f:
                data = ReadBudget(path).read(f, path.name)
        else:
            data = read_bounded(path, archives.MAX_BYTES, DataError)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} cannot be read ({e}); the file is damaged: replace it with the official one") from None
    # idx header: two zero bytes, the element type, the number of dimensions, then one
    # big-endian uint32 per dimension.
    header = 4 + 4 * ndim
    if len(data) < header or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE or data[3] != ndim:
        raise DataError(f"{path} is not an idx file of {ndim}-d unsigned bytes (magic {data[:4].hex() or 'missing'}, "
                        f"expected 0000{_UBYTE:02x}{ndim:02x}); replace it with the official MNIST file")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) - header != int(np.prod(shape)):
        raise DataError(f"{path} declares shape {shape} but holds {len(data) - header} values; "
                        "the file is truncated or damaged: replace it with the official one")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _resized(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.contiguous()
    # In chunks: the float copy of all 70,000 images at a large size would take gigabytes.
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out
