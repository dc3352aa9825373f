"""A user's own images: one sub-folder per class (torchvision's ImageFolder layout), or a CSV.

::

    path/                              labels.csv
        cat/  0001.jpg  0002.png ...       path,label
        dog/  ...                          img/0001.jpg,cat

Class names are the sub-folder names (or the CSV's labels), in sorted order; files
with an image extension PIL knows are read in sorted order (others, and hidden
entries, are skipped). CSV paths are relative to the CSV's folder.

Every image is converted to grayscale (``channels=1``) or RGB (``channels=3``) and
resized to ``image_size`` × ``image_size`` (Lanczos; the aspect ratio is not kept, as
in the usual mini-ImageNet pipelines). Unless given, both are inferred from the files'
headers: one channel when every image is grey, else three; the side length all images
share (their longer side), or for mixed sizes the median longer side taken down to one
of :data:`MIXED_SIZES` (stable as images are added), at most 84 (mini-ImageNet's size, to keep
CPU training affordable), at least 4. What was inferred, and how, is recorded in
``info`` and said on screen.

Splits divide the classes: ``train_classes`` / ``val_classes`` / ``test_classes``
(lists, or comma-separated names) name them; otherwise ``val_ratio`` and
``test_ratio`` of the classes, drawn with ``split_seed``, are held out (at least one
class each when the ratio is above zero and there are classes to spare). The split
(class names per split and the seed) is recorded in ``info``; split ``all`` is every
class.

The decoded arrays are cached under the data root's cache folder, keyed by the size and
modification time of every file, so editing the folder invalidates the cache.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import CheckpointError, ConfigError, DataError
from ..io import load_tensors, save_tensors
from .base import DATASETS, ClassDataset
from .download import cache_dir, data_root
from .images import decode_image

_MODES = {1: "L", 3: "RGB"}
_GREY = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
#: The largest inferred image side (mini-ImageNet's); larger images are downsampled to it.
MAX_INFERRED_SIZE = 84
#: The sides a folder of mixed sizes is resized to (its median side, taken down to one of
#: these): Omniglot's 28, CIFAR-FS's 32, mini-ImageNet's 84 and the steps between.
MIXED_SIZES = (4, 8, 16, 28, 32, 48, 64, 84)
#: The largest CSV read, in bytes.
MAX_CSV_BYTES = 64 << 20
#: The longest field of a CSV row (a path, a label): Linux's PATH_MAX.
MAX_CSV_FIELD = 4096


@DATASETS.register("folder")
def load_folder(root: str | Path | None = None, *, path: str | Path | None = None, channels: int | None = None,
                image_size: int | None = None, train_classes: str | Sequence[str] | None = None,
                val_classes: str | Sequence[str] | None = None, test_classes: str | Sequence[str] | None = None,
                val_ratio: float = 0.2, test_ratio: float = 0.2, split_seed: int = 0) -> ClassDataset:
    """Load the class folders (or CSV of ``path,label``) at ``path`` as a :class:`ClassDataset` of uint8 images."""
    if path is None:
        raise ConfigError("the folder dataset needs its folder (one sub-folder of images per class, or a CSV of "
                          "path,label rows): --path DIR on the command line, path=DIR in Python")
    if channels is not None and str(channels) not in ("1", "3"):
        raise ConfigError(f"--channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if image_size is not None and not 4 <= int(image_size) <= 512:
        raise ConfigError(f"--image-size for a folder must be between 4 and 512 pixels, got {image_size}")
    source = Path(path).expanduser()
    classes = csv_files(source) if source.suffix.lower() == ".csv" else class_files(source)
    inferred = {}
    if channels is None or image_size is None:
        c, size = _infer(classes)
        if channels is None:
            channels, inferred["channels"] = c, c
        if image_size is None:
            image_size, inferred["image_size"] = size, size
            warnings.warn(f"{source}: images resized to {size}x{size} pixels, inferred from their longer sides "
                          "(the shared side, or the median of mixed sizes taken down to one of "
                          f"{', '.join(map(str, MIXED_SIZES))}); set --image-size to choose", stacklevel=2)
    channels, image_size = int(channels), int(image_size)
    names = list(classes)
    splits = _splits(names, train_classes, val_classes, test_classes, val_ratio, test_ratio, split_seed)
    key = _fingerprint(classes, channels, image_size)
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", source.resolve().name)[:40]
    cache_file = cache_dir(data_root(root)) / f"folder-{label}-{key}.safetensors"
    images = _cached(cache_file, sum(len(f) for f in classes.values()), channels, image_size)
    if images is None:
        images = torch.from_numpy(np.stack([_decode(f, _MODES[channels], image_size)
                                            for files in classes.values() for f in files]))
        save_tensors(cache_file, {"images": images})
    labels = torch.repeat_interleave(torch.arange(len(classes)), torch.tensor([len(f) for f in classes.values()]))
    info = {"source": str(source), "channels": channels, "image_size": image_size, "inferred": inferred,
            "split_seed": split_seed, "split_classes": {s: [names[c] for c in ids] for s, ids in splits.items()}}
    return ClassDataset("folder", images, labels, names, splits, info)


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


def image_extensions() -> set[str]:
    """File extensions PIL can read (lower case, with the dot)."""
    return {ext.lower() for ext in Image.registered_extensions()}


def class_files(folder: Path, min_classes: int = 2) -> dict[str, list[Path]]:
    """``{class name: sorted image files}``, refusing empty classes and fewer than ``min_classes``."""
    extensions = image_extensions()
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; give a folder with one sub-folder of images per class")
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in sub.iterdir()
                       if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in extensions)
        if not files:
            raise DataError(f"class folder {sub} holds no images; add some or remove the folder")
        classes[sub.name] = files
    if len(classes) < min_classes:
        raise DataError(f"{folder} has {len(classes)} class sub-folder(s); few-shot tasks need at least {min_classes}, "
                        "one sub-folder of images per class")
    return classes


def csv_files(path: Path, min_classes: int = 2) -> dict[str, list[Path]]:
    """``{label: image files}`` from a CSV of ``path,label`` rows (a header row is optional)."""
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    with open(path, "rb") as f:
        raw = f.read(MAX_CSV_BYTES + 1)
    if len(raw) > MAX_CSV_BYTES:
        raise DataError(f"{path} is larger than {MAX_CSV_BYTES >> 20} MB; split it or use class folders")
    rows = _csv_rows(path, raw.decode("utf-8-sig", errors="replace"))
    if rows and [c.strip().lower() for c in rows[0][1]] == ["path", "label"]:
        rows = rows[1:]
    classes: dict[str, list[Path]] = {}
    for number, row in rows:
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2 or not row[1].strip():
            raise DataError(f"{path} line {number}: expected path,label, got {','.join(row)[:80]!r}")
        file = (path.parent / row[0].strip()).expanduser()
        if not file.is_file():
            raise DataError(f"{path} line {number}: image {file} does not exist")
        classes.setdefault(row[1].strip(), []).append(file)
    if len(classes) < min_classes:
        raise DataError(f"{path} names {len(classes)} label(s); few-shot tasks need at least {min_classes}")
    return {label: sorted(classes[label]) for label in sorted(classes)}


def _csv_rows(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of every line of a label CSV, read strictly: a row is one line.

    A quoted field may legally span lines, so one stray double quote would swallow every
    line up to the next quote (thousands of images dropped without a word); here a row that
    spans lines, a field longer than :data:`MAX_CSV_FIELD` characters or malformed quoting is
    a :class:`DataError` naming the file and line."""
    reader = csv.reader(io.StringIO(text), strict=True)
    rows, line = [], 0
    while True:
        first, error = line + 1, None
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as e:
            error = e
        line = reader.line_num
        if line > first:
            end = "the end of the file" if error else f"line {line}"
            raise DataError(f"{path} line {first}: a double quote opens a field that runs on to {end}; "
                            "remove the stray quote (or close it), one path,label row per line")
        if error:
            raise DataError(f"{path} line {first}: not a valid CSV row ({error}); check its quotes")
        if any(len(field) > MAX_CSV_FIELD for field in row):
            raise DataError(f"{path} line {first}: a field is longer than {MAX_CSV_FIELD:,} characters; "
                            "expected path,label")
        rows.append((first, row))


def _infer(classes: dict[str, list[Path]]) -> tuple[int, int]:
    """Channels (1 if every image is grey) and side length (the most common longer side, capped) from headers."""
    grey, sides = True, Counter()
    for files in classes.values():
        for f in files:
            try:
                with Image.open(f) as image:  # reads the header only
                    grey = grey and (image.mode in _GREY or (image.mode == "P" and _palette_is_grey(image)))
                    sides[max(image.size)] += 1
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
                raise DataError(f"{f} is not a readable image ({e}); fix or remove it") from None
    return (1 if grey else 3), inferred_side(sides)


def inferred_side(sides: Counter) -> int:
    """The image side of a folder whose images' longer sides are counted in ``sides``: that
    side when all share one; for mixed sizes their median, taken down to the nearest of the
    field's usual sizes (:data:`MIXED_SIZES`), so a few images more or less do not change
    it (the most common side did: adding 4 images to 200 turned 55 into 50, where this
    keeps 48); within [4, :data:`MAX_INFERRED_SIZE`]."""
    if len(sides) == 1:
        side = next(iter(sides))
    else:
        ordered = sorted(sides.elements())
        median = ordered[(len(ordered) - 1) // 2]
        side = max((s for s in MIXED_SIZES if s <= median), default=MIXED_SIZES[0])
    return min(max(side, 4), MAX_INFERRED_SIZE)


def _palette_is_grey(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))


def _names(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def _splits(names: list[str], train, val, test, val_ratio: float, test_ratio: float, seed: int) -> dict[str, list[int]]:
    """Class ids per split: named ones, or a seeded random hold-out of ``val_ratio`` / ``test_ratio`` of the classes."""
    index = {n: i for i, n in enumerate(names)}
    named = {s: _names(v) for s, v in (("train", train), ("val", val), ("test", test))}
    if any(v is not None for v in named.values()):
        for split, chosen in named.items():
            unknown = [n for n in chosen or [] if n not in index]
            if unknown:
                raise ConfigError(f"--{split}-classes names {', '.join(unknown[:5])}, not classes of this dataset; "
                                  f"its classes: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
        taken = {n for v in named.values() if v for n in v}
        if named["train"] is None:  # the classes no other split names
            named["train"] = [n for n in names if n not in taken]
        seen: dict[str, str] = {}
        for split, chosen in named.items():
            for n in chosen or []:
                if n in seen and seen[n] != split:
                    raise ConfigError(f"class '{n}' is in both the {seen[n]} and {split} classes; splits divide classes")
                seen[n] = split
        return {s: sorted(index[n] for n in v) for s, v in named.items() if v}
    for name, ratio in (("val_ratio", val_ratio), ("test_ratio", test_ratio)):
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 <= ratio < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a fraction in [0, 1), got {ratio!r}")
    if val_ratio + test_ratio >= 1:
        raise ConfigError(f"--val-ratio {val_ratio} and --test-ratio {test_ratio} leave no classes to train on")
    order = np.random.default_rng(seed).permutation(len(names)).tolist()
    counts = [int(round(ratio * len(names))) or (1 if ratio > 0 else 0) for ratio in (test_ratio, val_ratio)]
    if len(names) - sum(counts) < 1:  # too few classes to hold any out: everything trains
        counts = [0, 0]
    test, val, train = order[:counts[0]], order[counts[0]:sum(counts)], order[sum(counts):]
    return {s: sorted(v) for s, v in (("train", train), ("val", val), ("test", test)) if v}


def _fingerprint(classes: dict[str, list[Path]], channels: int, image_size: int) -> str:
    digest = hashlib.sha256(f"folder-v3-{channels}-{image_size}".encode())  # v3: float images scaled
    for label, files in classes.items():
        for f in files:
            stat = f.stat()
            digest.update(f"{label}/{f.resolve().as_posix()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode(path: Path, mode: str, size: int) -> np.ndarray:
    """One image as ``(channels, size, size)`` uint8."""
    array = decode_image(path, mode, size, str(path))
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
