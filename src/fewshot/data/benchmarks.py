"""What the benchmark datasets (mini-ImageNet, tiered-ImageNet, CUB-200-2011) share: their
committed split files, checked by SHA-256; where their folder is; and the decoded-image
cache, written once image by image into a memory map and memory-mapped when read.

The split files live in ``fewshot/data/splits/`` (see its ``PROVENANCE``): small text
taken from the benchmarks' public repositories. A file whose checksum differs from
:data:`SPLIT_SHA256` is refused: a split that silently changed would make results
incomparable with the papers'.

The cache is one safetensors file (the format of every fewshot cache, readable by
:func:`fewshot.io.load_tensors`) holding ``images``, ``(n, 3, s, s)`` uint8. It is written
to a temporary file of its final size, filled one decoded image at a time through a
memory map (so decoding 60,000 images needs the memory of one image, not of all of them)
and renamed into place when complete; it is read back as a copy-on-write memory map, so
loading a cached dataset costs neither time nor memory until episodes touch its pages.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, DataError
from ..io import atomic_path, read_bounded, write_failure
from ..progress import bar as progress_bar
from .download import cache_dir, data_root
from .images import to_pixels

if TYPE_CHECKING:
    from .base import ClassDataset

#: Where the split files are (tests point it elsewhere).
SPLITS_DIR = Path(__file__).with_name("splits")
#: SHA-256 of every split file, as recorded in ``splits/PROVENANCE``.
SPLIT_SHA256 = {
    "cub-chen2019.txt": "2bac6a3050a7f48aba01af7e64b91f00b34e19ee2118793ee7d60ce468b5da13",
    "mini-imagenet-test.txt": "cb594248f5c9fe821ad946d77870e379d19145031abd9e8661322fd3449b3274",
    "mini-imagenet-train.txt": "617600f7f3ba9b5cd319a6f963a478694cd6bf38252aa16d1acf7e8ce4f106ab",
    "mini-imagenet-val.txt": "71592e7d268aa1975f457323419b113ee0a951e7fa321828c94ade452cf84bc4",
    "tiered-imagenet-test.csv": "a478b4481aae4003b6b3c7a09f9ddc56b36f54652e01b83d07a8e6ee1b789d56",
    "tiered-imagenet-train.csv": "6b87c8440f610d406bce85ac70db018485cc1b036a9106d512e75e4988eb3e15",
    "tiered-imagenet-val.csv": "e63540c17e82c2de98df9244b03cdb7e214ea513ae543d6dbc29998f9597cfc5",
    "tiered-imagenet-words.txt": "db4374cde3f97d24564ab0cd39f55dac7e34f5581c759439590175c06463c2af",
}
SPLITS = ("train", "val", "test")
#: The largest text file a benchmark loader reads (split files, CSVs, CUB's lists).
MAX_TEXT_BYTES = 32 << 20
MIN_SIZE, MAX_SIZE = 4, 512
_CACHE_VERSION = "bench-v1"
#: Images decoded between two releases of the written pages (see :func:`cached_images`).
RELEASE_EVERY = 2048


def split_lines(name: str) -> list[str]:
    """The non-empty lines of the committed split file ``name``, after checking its SHA-256."""
    path = SPLITS_DIR / name
    if not path.is_file():
        raise DataError(f"split file {path} is missing from the fewshot installation; reinstall fewshot")
    data = read_bounded(path, 1 << 20, DataError)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SPLIT_SHA256.get(name):
        raise DataError(f"split file {path} has SHA-256 {digest[:16]}..., not the recorded "
                        f"{SPLIT_SHA256.get(name, '?')[:16]}... (see splits/PROVENANCE); it was altered: reinstall fewshot")
    return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]


def locate(name: str, root, path) -> tuple[Path, str]:
    """The folder of dataset ``name`` and where it came from, for messages: ``path`` (``--path``)
    when given, else ``<data root>/name`` (``--data-root``, else ``FEWSHOT_DATA``, else the default)."""
    if path:
        return Path(path).expanduser(), "--path"
    if root:
        how = "--data-root"
    elif os.environ.get("FEWSHOT_DATA"):
        how = "FEWSHOT_DATA"
    else:
        how = "the default data root; set FEWSHOT_DATA or pass --path"
    return data_root(root) / name, how


def check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not MIN_SIZE <= image_size <= MAX_SIZE:
        raise ConfigError(f"image_size must be an integer from {MIN_SIZE} to {MAX_SIZE} pixels, got {image_size!r}")
    return image_size


def read_text(path: Path, what: str) -> str:
    """A text file the user's layout holds (a CSV, a list), bounded."""
    return read_bounded(path, MAX_TEXT_BYTES, DataError).decode("utf-8", errors="replace")


def fingerprint(*parts: object, files: Iterable[Path] = ()) -> str:
    """A cache key from ``parts`` and the size and modification time of ``files``."""
    digest = hashlib.sha256(json.dumps([_CACHE_VERSION, *map(str, parts)]).encode())
    for f in files:
        stat = f.stat()
        digest.update(f"{f.resolve().as_posix()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cached_images(root, name: str, key: str, count: int, size: int,
                  fill: Callable[[np.ndarray, Callable[[int], None]], None]) -> torch.Tensor:
    """The ``(count, 3, size, size)`` uint8 images of cache ``name``-``key`` (in the cache folder of
    data root ``root``): memory-mapped from the
    cache when it is there and whole, else decoded by ``fill(out, advance)`` straight into a
    memory-mapped file (``advance(n)`` moves the progress bar) and then memory-mapped."""
    cache_file = cache_dir(data_root(root)) / f"{name}-{size}px-{key}.safetensors"
    shape = (count, 3, size, size)
    images = _open(cache_file, shape)
    if images is None:
        _write(cache_file, shape, fill, f"decoding {name}")
        images = _open(cache_file, shape)
        if images is None:
            raise DataError(f"{cache_file} could not be read back after it was written; check the disk")
    return images


def _header(shape: tuple[int, ...]) -> bytes:
    nbytes = int(np.prod(shape))
    header = json.dumps({"images": {"dtype": "U8", "shape": list(shape), "data_offsets": [0, nbytes]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


def _write(cache_file: Path, shape: tuple[int, ...], fill, desc: str) -> None:
    header = _header(shape)
    with atomic_path(cache_file) as tmp:
        try:
            with open(tmp, "r+b") as f:
                f.write(header)
                f.truncate(len(header) + int(np.prod(shape)))
                buffer = mmap.mmap(f.fileno(), 0)
        except (OSError, ValueError) as e:
            raise write_failure(cache_file, e) from None
        out = np.frombuffer(buffer, dtype=np.uint8, offset=len(header)).reshape(shape)
        written = [0]

        def advance(n: int) -> None:
            bar.update(n)
            written[0] += n
            if written[0] >= RELEASE_EVERY:
                # Pages written are the page cache's to write back: unmapping them keeps this
                # process's resident memory at a few MB however large the cache grows.
                written[0] = 0
                buffer.flush()
                buffer.madvise(mmap.MADV_DONTNEED)

        with progress_bar(shape[0], desc=desc, unit="img", leave=False) as bar:
            fill(out, advance)  # on an error the map goes with the traceback, and the file with atomic_path
        buffer.flush()
        del out
        buffer.close()


def _open(cache_file: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The cached images, copy-on-write memory-mapped, or ``None`` when the cache is missing or
    is not exactly what ``shape`` asks for (a damaged cache is only a cache: decoded again)."""
    expected = _header(shape)
    try:
        with open(cache_file, "rb") as f:
            head = f.read(len(expected))
        size = cache_file.stat().st_size
    except OSError:
        return None
    # The header is compared byte for byte with the one fewshot writes: nothing in it is parsed.
    if head != expected or size != len(expected) + int(np.prod(shape)):
        return None
    array = np.memmap(cache_file, dtype=np.uint8, mode="c", offset=len(expected), shape=shape)
    return torch.from_numpy(array)



def release_pages(array: np.ndarray) -> None:
    """Let the pages of the file that ``array`` views through a memory map (a pickle read by
    :func:`~fewshot.data.safepickle.read_pickle`, an ``.npz`` mapped in place) leave this
    process's resident memory: they stay in the page cache, read again if touched, so reading
    a large file part by part, releasing after each, costs the memory of one part."""
    base = array
    while isinstance(getattr(base, "base", None), (np.ndarray, memoryview, mmap.mmap)):
        base = base.base
    owner = base.obj if isinstance(base, memoryview) else base
    if isinstance(owner, mmap.mmap):
        owner.madvise(mmap.MADV_DONTNEED)


def to_chw(image: np.ndarray, size: int, label: str) -> np.ndarray:
    """One ``(h, w, 3)`` uint8 image as ``(3, size, size)``: as it is when it has that size, else
    resized (Lanczos, as every decoded image is)."""
    if image.shape[:2] != (size, size):
        image = to_pixels(Image.fromarray(np.ascontiguousarray(image), "RGB"), "RGB", (size, size), label)
    return image.transpose(2, 0, 1)


def missing(dataset: str, folder: Path, how: str, what: str) -> DataError:
    """The one-line error of a dataset whose files are not what they should be, saying where fewshot looked."""
    return DataError(f"{dataset}: {what} (looked in {folder}, from {how})")


def assemble(dataset: str, per_split: dict[str, list[str]], counts: list[int], images: torch.Tensor,
             info: dict, groups: list[str] | None = None) -> "ClassDataset":
    """The :class:`ClassDataset` of classes listed split by split (``per_split``), each a block of
    ``counts[c]`` images in that order; ``trainval`` joins ``train`` and ``val``."""
    from .base import ClassDataset

    names = [c for split in SPLITS for c in per_split[split]]
    splits, start = {}, 0
    for split in SPLITS:
        splits[split] = list(range(start, start + len(per_split[split])))
        start += len(per_split[split])
    splits["trainval"] = splits["train"] + splits["val"]
    labels = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(counts, dtype=torch.int64))
    return ClassDataset(dataset, images, labels, names, splits, info, class_groups=groups)


__all__ = ["MAX_TEXT_BYTES", "SPLITS", "SPLITS_DIR", "SPLIT_SHA256", "assemble", "cached_images", "check_size", "fingerprint", "missing",
           "locate", "read_text", "release_pages", "split_lines", "to_chw"]
