"""mini-ImageNet (Vinyals et al., 2016, arXiv:1606.04080): 100 ImageNet classes x 600 images, split 64 / 16 / 20.

The split is Ravi & Larochelle's (2017, "Optimization as a Model for Few-Shot
Learning", ICLR; no arXiv version), the one every paper since reports on.

Read from ``<data root>/mini-imagenet/`` (or ``--path``), in either of the two layouts
users have:

* ``images``: ``images/`` holding the 60,000 images (``n0153282900000005.jpg`` ...) and
  Ravi & Larochelle's ``train.csv``, ``val.csv``, ``test.csv`` (``filename,label`` rows);
* ``pickle``: the arrays many mirrors distribute, ``mini-imagenet-cache-train.pkl``,
  ``-val.pkl``, ``-test.pkl``, each a dict of ``image_data`` (``(n, 84, 84, 3)`` uint8) and
  ``class_dict`` (synset -> image indices). They are read by
  :func:`fewshot.data.safepickle.read_pickle`, which runs no code.

Both give the same classes in the same order: those of the committed split lists
(``splits/mini-imagenet-*.txt``, checked by SHA-256), ``train`` then ``val`` then
``test``. Every class must have exactly 600 images. A folder holding files of both
layouts is refused unless ``layout`` names one. Images are decoded once into the
memory-mapped uint8 cache, ``(n, 3, image_size, image_size)`` (84 by default), resized
with Lanczos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .base import DATASETS, ClassDataset
from .benchmarks import (SPLITS, assemble, cached_images, check_size, fingerprint, locate, missing, read_text,
                         release_pages, split_lines, to_chw)
from .images import decode_image
from .safepickle import read_pickle

NAME = "mini-imagenet"
#: Images every class has (tests lower it).
IMAGES_PER_CLASS = 600
LAYOUTS = ("auto", "images", "pickle")
_PICKLE = "mini-imagenet-cache-{}.pkl"


def split_classes() -> dict[str, list[str]]:
    """The Ravi & Larochelle class lists (synsets), split by split, checked by SHA-256."""
    return {split: split_lines(f"mini-imagenet-{split}.txt") for split in SPLITS}


@DATASETS.register(NAME)
def load_mini_imagenet(root: str | Path | None = None, *, path: str | Path | None = None, image_size: int = 84,
                       layout: str = "auto") -> ClassDataset:
    """Load mini-ImageNet as a :class:`ClassDataset` (see the module docstring)."""
    image_size = check_size(image_size)
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown mini-ImageNet layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
    folder, how = locate(NAME, root, path)
    classes = split_classes()
    layout = _layout(folder, how, layout)
    order = [c for split in SPLITS for c in classes[split]]
    if layout == "images":
        files = _csv_files(folder, how, classes)
        sources = [f for c in order for f in files[c]]
        key = fingerprint(NAME, layout, files=[folder / f"{s}.csv" for s in SPLITS] + sources)

        def fill(out, advance):
            for i, f in enumerate(sources):
                out[i] = decode_image(f, "RGB", image_size, str(f)).transpose(2, 0, 1)
                advance(1)
    else:
        arrays = {split: _pickle_split(folder, how, split, classes[split]) for split in SPLITS}
        key = fingerprint(NAME, layout, files=[folder / _PICKLE.format(s) for s in SPLITS])

        def fill(out, advance):
            i = 0
            for split in SPLITS:
                images, index = arrays[split]
                for c in classes[split]:
                    for j in index[c]:
                        out[i] = to_chw(images[j], image_size, f"{folder / _PICKLE.format(split)}[{j}]")
                        i += 1
                    release_pages(images)
                    advance(len(index[c]))
    count = len(order) * IMAGES_PER_CLASS
    images = cached_images(root, NAME, key, count, image_size, fill)
    info = {"source": str(folder), "layout": layout, "image_size": image_size, "split": "ravi"}
    return assemble(NAME, classes, [IMAGES_PER_CLASS] * len(order), images, info)


def _layout(folder: Path, how: str, layout: str) -> str:
    """The layout the folder holds: exactly one must be complete (or the one ``layout`` names)."""
    if not folder.is_dir():
        raise missing(NAME, folder, how, "no such folder; it should hold images/ and train.csv, val.csv, test.csv, "
                                          "or mini-imagenet-cache-{train,val,test}.pkl")
    need = {"images": ["images/"] + [f"{s}.csv" for s in SPLITS], "pickle": [_PICKLE.format(s) for s in SPLITS]}
    present = {k: [n for n in names if (folder / n.rstrip("/")).exists()] for k, names in need.items()}
    if layout == "auto":
        found = [k for k in need if present[k]]
        if len(found) == 2:
            raise missing(NAME, folder, how, f"the folder mixes two layouts ({', '.join(present['images'])} and "
                                             f"{', '.join(present['pickle'])}); keep one, or choose with the dataset "
                                             "option layout=images or layout=pickle")
        if not found:
            raise missing(NAME, folder, how, "found neither images/ with train.csv, val.csv, test.csv nor "
                                             "mini-imagenet-cache-{train,val,test}.pkl")
        layout = found[0]
    lacking = [n for n in need[layout] if n not in present[layout]]
    if lacking:
        raise missing(NAME, folder, how, f"the {layout} layout lacks {', '.join(lacking)}")
    return layout


def _csv_files(folder: Path, how: str, classes: dict[str, list[str]]) -> dict[str, list[Path]]:
    """``{synset: image files}`` from the user's CSVs, checked against the committed class lists."""
    files: dict[str, list[Path]] = {}
    for split in SPLITS:
        csv = folder / f"{split}.csv"
        rows = [line.strip().split(",") for line in read_text(csv, "CSV").splitlines() if line.strip()]
        if rows and rows[0] == ["filename", "label"]:
            rows = rows[1:]
        bad = next((n for n, row in enumerate(rows, 2) if len(row) != 2 or "/" in row[0] or row[0].startswith(".")), None)
        if bad is not None:
            raise missing(NAME, folder, how, f"{csv.name} line {bad} is not a filename,label row")
        found: dict[str, list[Path]] = {}
        for name, label in rows:
            found.setdefault(label, []).append(folder / "images" / name)
        if set(found) != set(classes[split]):
            odd = sorted(set(found) ^ set(classes[split]))
            raise missing(NAME, folder, how, f"{csv.name} has {len(found)} classes, not the {len(classes[split])} of "
                                             f"Ravi & Larochelle's {split} split (differing: {', '.join(odd[:3])})")
        short = next((c for c in classes[split] if len(found[c]) != IMAGES_PER_CLASS), None)
        if short is not None:
            raise missing(NAME, folder, how, f"{csv.name} lists {len(found[short])} images of class {short}, "
                                             f"not {IMAGES_PER_CLASS}")
        files.update(found)
    absent = [f for c in files for f in files[c] if not f.is_file()]
    if absent:
        raise missing(NAME, folder, how, f"{len(absent)} images named in the CSVs are not in images/ "
                                         f"(first: {absent[0].name})")
    return files


def _pickle_split(folder: Path, how: str, split: str, classes: list[str]):
    """The image array and ``{synset: indices}`` of one pickled split, checked."""
    path = folder / _PICKLE.format(split)
    data = read_pickle(path)
    data = {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()} if isinstance(data, dict) else {}
    images, index = data.get("image_data"), data.get("class_dict")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 \
            or not isinstance(index, dict):
        raise missing(NAME, folder, how, f"{path.name} is not a dict of image_data ((n, h, w, 3) uint8) and "
                                         "class_dict; replace it with the mirror's file")
    index = {k.decode() if isinstance(k, bytes) else str(k): v for k, v in index.items()}
    if set(index) != set(classes):
        odd = sorted(set(index) ^ set(classes))
        raise missing(NAME, folder, how, f"{path.name} has {len(index)} classes, not the {len(classes)} of "
                                         f"Ravi & Larochelle's {split} split (differing: {', '.join(odd[:3])})")
    for c in classes:
        ids = index[c]
        if not isinstance(ids, (list, tuple, np.ndarray)) or len(ids) != IMAGES_PER_CLASS \
                or not all(isinstance(j, (int, np.integer)) and 0 <= j < len(images) for j in ids):
            raise missing(NAME, folder, how, f"{path.name} gives class {c} {len(ids) if hasattr(ids, '__len__') else 0} "
                                             f"valid image indices, not {IMAGES_PER_CLASS}")
    return images, {c: [int(j) for j in index[c]] for c in classes}
