"""CUB-200-2011 (Wah et al., 2011): 200 bird species, 11,788 images, split 100 / 50 / 50 as in Chen et al. (2019).

Wah, Branson, Welinder, Perona & Belongie, Caltech technical report CNS-TR-2011-001
(no arXiv version).

Read from ``<data root>/cub/`` (or ``--path``), holding the official archive's folder
``CUB_200_2011/`` (or its contents): ``images/<class>/<image>.jpg``, ``images.txt``
(``id path``), ``image_class_labels.txt`` (``id class``), ``classes.txt`` (``class name``)
and, for ``bounding_boxes=True``, ``bounding_boxes.txt`` (``id x y width height``): each
image is then cropped to its box before it is resized, as several papers do.

Splits (``split_scheme``):

* ``chen2019``: Chen et al. (2019, "A Closer Look at Few-shot Classification",
  arXiv:1904.04232), 100 / 50 / 50 classes by a rule on the sorted class folders (the
  i-th to ``train`` when i is even, to ``val`` when i % 4 == 1, to ``test`` when
  i % 4 == 3), committed as ``splits/cub-chen2019.txt`` and checked by SHA-256.

Images come class by class in ``classes.txt`` order, each class's in ``images.txt``
order, decoded once into the memory-mapped uint8 cache, ``(n, 3, image_size, image_size)``
(84 by default), resized with Lanczos (the aspect ratio is not kept).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .base import DATASETS, ClassDataset
from .benchmarks import SPLITS, assemble, cached_images, check_size, fingerprint, locate, missing, read_text, split_lines
from .images import open_image, to_pixels

NAME = "cub"
#: Images in the official archive (tests lower it).
IMAGES = 11_788
SPLIT_FILES = {"chen2019": "cub-chen2019.txt"}
_LISTS = ("images.txt", "image_class_labels.txt", "classes.txt")


def split_classes(scheme: str) -> dict[str, list[str]]:
    """The class folders of each split of ``scheme``, from its committed file."""
    if scheme not in SPLIT_FILES:
        raise ConfigError(f"unknown CUB split scheme '{scheme}'; choose one of {', '.join(SPLIT_FILES)}")
    classes: dict[str, list[str]] = {split: [] for split in SPLITS}
    for line in split_lines(SPLIT_FILES[scheme]):
        split, name = line.split(" ", 1)
        classes[split].append(name)
    return classes


@DATASETS.register(NAME)
def load_cub(root: str | Path | None = None, *, path: str | Path | None = None, image_size: int = 84,
             split_scheme: str = "chen2019", bounding_boxes: bool = False) -> ClassDataset:
    """Load CUB-200-2011 as a :class:`ClassDataset` (see the module docstring)."""
    image_size = check_size(image_size)
    classes = split_classes(split_scheme)
    folder, how = locate(NAME, root, path)
    if (folder / "CUB_200_2011").is_dir():
        folder = folder / "CUB_200_2011"
    lacking = [n for n in (*_LISTS, "images") + (("bounding_boxes.txt",) if bounding_boxes else ())
               if not (folder / n).exists()]
    if lacking:
        raise missing(NAME, folder, how, f"lacks {', '.join(lacking)}; it should hold the official CUB_200_2011 folder")
    names = dict(_table(folder, how, "classes.txt", 1))
    expected = sorted(c for split in SPLITS for c in classes[split])
    if sorted(names.values()) != expected:
        odd = sorted(set(names.values()) ^ set(expected))
        raise missing(NAME, folder, how, f"classes.txt lists {len(names)} classes, not CUB's 200 "
                                         f"(differing: {', '.join(odd[:3])})")
    paths = dict(_table(folder, how, "images.txt", 1))
    labels = dict(_table(folder, how, "image_class_labels.txt", 1))
    boxes = dict(_table(folder, how, "bounding_boxes.txt", 4)) if bounding_boxes else {}
    if len(paths) != IMAGES or set(labels) != set(paths) or (bounding_boxes and set(boxes) != set(paths)):
        raise missing(NAME, folder, how, f"images.txt lists {len(paths):,} images, image_class_labels.txt "
                                         f"{len(labels):,}, not CUB's {IMAGES:,} each")
    by_class: dict[str, list[str]] = {name: [] for name in names.values()}
    for image_id, rel in paths.items():
        name = names.get(labels[image_id])
        if name is None or not rel.startswith(name + "/"):
            raise missing(NAME, folder, how, f"image {image_id} ({rel}) is not labelled with its class folder")
        by_class[name].append(image_id)
    absent = next((c for c in expected if not (folder / "images" / c).is_dir()), None)
    if absent is not None:
        raise missing(NAME, folder, how, f"class folder images/{absent}/ is missing")
    order = [c for split in SPLITS for c in classes[split]]
    ids = [i for c in order for i in by_class[c]]
    files = [folder / "images" / paths[i] for i in ids]
    lost = next((f for f in files if not f.is_file()), None)
    if lost is not None:
        raise missing(NAME, folder, how, f"images/{lost.relative_to(folder / 'images')} listed in images.txt is missing")
    key = fingerprint(NAME, bounding_boxes, files=[folder / n for n in _LISTS] + files)

    def fill(out, advance):
        for k, (image_id, f) in enumerate(zip(ids, files)):
            image = open_image(f, str(f))
            if bounding_boxes:
                x, y, w, h = (float(v) for v in boxes[image_id].split())
                image = image.crop((int(x), int(y), int(x + max(w, 1)), int(y + max(h, 1))))
            out[k] = to_pixels(image, "RGB", (image_size, image_size), str(f)).transpose(2, 0, 1)
            advance(1)
    images = cached_images(root, NAME, key, len(ids), image_size, fill)
    info = {"source": str(folder), "image_size": image_size, "split_scheme": split_scheme,
            "bounding_boxes": bounding_boxes}
    return assemble(NAME, classes, [len(by_class[c]) for c in order], images, info)


def _table(folder: Path, how: str, name: str, fields: int) -> list[tuple[str, str]]:
    """``(id, rest)`` of every line of one of CUB's lists, ``rest`` being ``fields`` fields."""
    rows = []
    for n, line in enumerate(read_text(folder / name, name).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != fields + 1 or not parts[0].isdigit():
            raise missing(NAME, folder, how, f"{name} line {n} is not 'id' and {fields} field(s)")
        if fields == 4:
            try:
                [float(v) for v in parts[1:]]
            except ValueError:
                raise missing(NAME, folder, how, f"{name} line {n} has a box that is not numbers") from None
        rows.append((parts[0], " ".join(parts[1:])))
    return rows
