"""tiered-ImageNet (Ren et al., 2018, arXiv:1803.00676): 608 ImageNet classes in 34 categories, split 351 / 97 / 160.

Ren et al., "Meta-Learning for Semi-Supervised Few-Shot Classification": the splits hold
20 / 6 / 8 categories.

The classes are grouped by 34 high-level ImageNet categories, and no category is shared
between splits. Every class belongs to its category (``class_groups``), so episodes can
be drawn within one category (``EpisodeSampler(..., within_groups=True)``), as
Omniglot's within-alphabet episodes are.

Read from ``<data root>/tiered-imagenet/`` (or ``--path``), in either layout:

* ``pickle``: the files Ren et al.'s code writes and mirrors distribute,
  ``{train,val,test}_images_png.pkl`` (a list of PNG-encoded 84×84 images) and
  ``{train,val,test}_labels.pkl`` (``label_specific``: each image's class index into
  ``label_specific_str``, the class's ImageNet words; ``label_general``: its category).
  They are read by :func:`fewshot.data.safepickle.read_pickle`, which runs no code. The
  files name classes by their words only; the committed ``tiered-imagenet-words.txt``
  maps them back to synsets. Instead of ``*_images_png.pkl``, a split may come as
  ``{split}_images.npz``, the decoded arrays the same code writes (``images``,
  ``(n, 84, 84, 3)`` uint8, stored uncompressed, in OpenCV's BGR order: turned to RGB
  here); it is memory-mapped in place, not read into memory.
* ``folder``: an ImageNet training folder (``--path /data/imagenet/train``), one
  ``nXXXXXXXX/`` sub-folder of images per synset; the 608 synsets of the split are read.

Classes come in the order of the committed split lists (``splits/tiered-imagenet-*.csv``,
checked by SHA-256), ``train`` then ``val`` then ``test``, each class's images in file
order. The pickled layout must hold 448,695 / 124,261 / 206,209 images; in the folder
layout every class needs at least 732 images (ImageNet's fewest). Images are decoded once
into the memory-mapped uint8 cache, ``(n, 3, image_size, image_size)`` (84 by default).
"""

from __future__ import annotations

import mmap
import struct
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .base import DATASETS, ClassDataset
from .benchmarks import (SPLITS, assemble, cached_images, check_size, fingerprint, locate, missing,
                         release_pages, split_lines, to_chw)
from .folder import image_extensions
from .images import decode_image
from .safepickle import read_pickle

NAME = "tiered-imagenet"
#: Images per split of the pickled layout (tests lower them).
PICKLE_IMAGES = {"train": 448_695, "val": 124_261, "test": 206_209}
#: The fewest images a class may have in the folder layout (tests lower it).
MIN_FOLDER_IMAGES = 732
LAYOUTS = ("auto", "folder", "pickle")


def split_classes() -> tuple[dict[str, list[str]], dict[str, str]]:
    """The synsets of each split and each synset's category, from the committed lists."""
    classes, category = {}, {}
    for split in SPLITS:
        rows = [line.split(",") for line in split_lines(f"tiered-imagenet-{split}.csv")]
        classes[split] = [r[0] for r in rows]
        category.update({r[0]: r[1] for r in rows})
    return classes, category


def words() -> dict[str, str]:
    """ImageNet's words for every synset and category of the split."""
    return dict(line.split("\t", 1) for line in split_lines("tiered-imagenet-words.txt"))


@DATASETS.register(NAME)
def load_tiered_imagenet(root: str | Path | None = None, *, path: str | Path | None = None, image_size: int = 84,
                         layout: str = "auto") -> ClassDataset:
    """Load tiered-ImageNet as a :class:`ClassDataset` (see the module docstring)."""
    image_size = check_size(image_size)
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown tiered-ImageNet layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
    folder, how = locate(NAME, root, path)
    classes, category = split_classes()
    order = [c for split in SPLITS for c in classes[split]]
    layout = _layout(folder, how, layout)
    if layout == "folder":
        files = _folder_files(folder, how, order)
        sources = [f for c in order for f in files[c]]
        counts = [len(files[c]) for c in order]
        key = fingerprint(NAME, layout, files=sources)

        def fill(out, advance):
            for i, f in enumerate(sources):
                out[i] = decode_image(f, "RGB", image_size, str(f)).transpose(2, 0, 1)
                advance(1)
    else:
        index = {split: _pickle_labels(folder, how, split, classes[split], category) for split in SPLITS}
        counts = [len(index[split][c]) for split in SPLITS for c in classes[split]]
        key = fingerprint(NAME, layout, files=[f for s in SPLITS for f in _pickle_files(folder, s)])

        def fill(out, advance):
            i = 0
            for split in SPLITS:
                npz = folder / f"{split}_images.npz"
                if npz.is_file() and not (folder / f"{split}_images_png.pkl").is_file():
                    arrays = _npz_images(folder, how, npz, PICKLE_IMAGES[split])
                    for c in classes[split]:
                        for j in index[split][c]:
                            out[i] = to_chw(arrays[j, :, :, ::-1], image_size, f"{npz}[{j}]")
                            i += 1
                        release_pages(arrays)
                        advance(len(index[split][c]))
                    del arrays
                    continue
                path = folder / f"{split}_images_png.pkl"
                entries = read_pickle(path)
                if not isinstance(entries, list) or len(entries) != PICKLE_IMAGES[split]:
                    raise missing(NAME, folder, how, f"{path.name} is not a list of {PICKLE_IMAGES[split]:,} "
                                                     "PNG-encoded images; replace it with the mirror's file")
                for c in classes[split]:
                    for j in index[split][c]:
                        png = entries[j]
                        if not isinstance(png, (np.ndarray, bytes)):
                            raise missing(NAME, folder, how, f"{path.name} item {j} is not PNG bytes")
                        out[i] = decode_image(np.asarray(png, dtype=np.uint8).tobytes(), "RGB", image_size,
                                              f"{path}[{j}]").transpose(2, 0, 1)
                        i += 1
                    if isinstance(png, np.ndarray):
                        release_pages(png)
                    advance(len(index[split][c]))
                del entries
    images = cached_images(root, NAME, key, sum(counts), image_size, fill)
    info = {"source": str(folder), "layout": layout, "image_size": image_size}
    return assemble(NAME, classes, counts, images, info, groups=[category[c] for c in order])


def _layout(folder: Path, how: str, layout: str) -> str:
    if not folder.is_dir():
        raise missing(NAME, folder, how, "no such folder; it should hold {train,val,test}_images_png.pkl and "
                                         "{train,val,test}_labels.pkl, or ImageNet's nXXXXXXXX/ synset folders")
    pickles = [f"{s}_{k}" for s in SPLITS for k in ("images_png.pkl", "labels.pkl")]
    present = [n for n in pickles if (folder / n).is_file()
               or (n.endswith("_images_png.pkl") and (folder / n.replace("_png.pkl", ".npz")).is_file())]
    synsets = any(p.is_dir() and p.name.startswith("n") and p.name[1:].isdigit() for p in folder.iterdir())
    if layout == "auto":
        if present and synsets:
            raise missing(NAME, folder, how, f"the folder mixes two layouts (synset folders and {', '.join(present)}); "
                                             "keep one, or choose with the dataset option layout=folder or layout=pickle")
        if not present and not synsets:
            raise missing(NAME, folder, how, "found neither {train,val,test}_images_png.pkl with *_labels.pkl nor "
                                             "ImageNet's nXXXXXXXX/ synset folders")
        layout = "pickle" if present else "folder"
    lacking = [n for n in pickles if n not in present]
    if layout == "pickle" and lacking:
        raise missing(NAME, folder, how, f"the pickle layout lacks {', '.join(lacking)} (or *_images.npz)")
    return layout


def _folder_files(folder: Path, how: str, order: list[str]) -> dict[str, list[Path]]:
    extensions = image_extensions()
    files = {}
    for synset in order:
        sub = folder / synset
        if not sub.is_dir():
            raise missing(NAME, folder, how, f"class folder {synset}/ is missing (one of the 608 tiered-ImageNet "
                                             "synsets); give the whole ImageNet training folder")
        files[synset] = sorted(f for f in sub.iterdir() if f.suffix.lower() in extensions and not f.name.startswith("."))
        if len(files[synset]) < MIN_FOLDER_IMAGES:
            raise missing(NAME, folder, how, f"class folder {synset}/ holds {len(files[synset])} images, fewer than "
                                             f"the {MIN_FOLDER_IMAGES} of any ImageNet training class")
    return files


def _pickle_labels(folder: Path, how: str, split: str, synsets: list[str], category: dict[str, str]) -> dict:
    """``{synset: image indices}`` of one pickled split, from its labels file, checked."""
    path = folder / f"{split}_labels.pkl"
    data = read_pickle(path)
    data = {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()} if isinstance(data, dict) else {}
    specific, general, names = data.get("label_specific"), data.get("label_general"), data.get("label_specific_str")
    if not all(isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind in "iu" for a in (specific, general)) \
            or len(specific) != len(general) or not isinstance(names, list):
        raise missing(NAME, folder, how, f"{path.name} is not a dict of label_specific, label_general and "
                                         "label_specific_str; replace it with the mirror's file")
    if len(specific) != PICKLE_IMAGES[split]:
        raise missing(NAME, folder, how, f"{path.name} labels {len(specific):,} images, not the "
                                         f"{PICKLE_IMAGES[split]:,} of tiered-ImageNet's {split} split")
    by_words = {w: s for s, w in words().items()}
    text = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
    unknown = [t for t in text if by_words.get(t.strip()) not in synsets]
    if unknown or len(set(text)) != len(synsets):
        raise missing(NAME, folder, how, f"{path.name} names {len(set(text))} classes, not the {len(synsets)} of "
                                         f"tiered-ImageNet's {split} split" + (f" (unknown: '{unknown[0]}')" if unknown else ""))
    if specific.min(initial=0) < 0 or specific.max(initial=0) >= len(text):
        raise missing(NAME, folder, how, f"{path.name} has label_specific values outside 0..{len(text) - 1}")
    index = {by_words[t.strip()]: np.flatnonzero(specific == k).tolist() for k, t in enumerate(text)}
    # Categories: each class's images share one label_general, shared exactly by the classes of its category.
    grouping = {}
    for synset, ids in index.items():
        values = np.unique(general[ids])
        if len(values) != 1:
            raise missing(NAME, folder, how, f"{path.name} gives class {synset} images of {len(values)} categories")
        grouping.setdefault(int(values[0]), set()).add(synset)
    expected = {}
    for synset in synsets:
        expected.setdefault(category[synset], set()).add(synset)
    if sorted(map(sorted, grouping.values())) != sorted(map(sorted, expected.values())):
        raise missing(NAME, folder, how, f"{path.name} groups the classes into categories other than tiered-ImageNet's")
    empty = next((s for s in synsets if not index.get(s)), None)
    if empty is not None:
        raise missing(NAME, folder, how, f"{path.name} has no images of class {empty}")
    return index


def _pickle_files(folder: Path, split: str) -> list[Path]:
    images = folder / f"{split}_images_png.pkl"
    return [folder / f"{split}_labels.pkl", images if images.is_file() else folder / f"{split}_images.npz"]


def _npz_images(folder: Path, how: str, path: Path, count: int) -> np.ndarray:
    """The ``images`` array of an uncompressed ``.npz``, memory-mapped where it lies in the zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = archive.getinfo("images.npy")
        with open(path, "rb") as f:
            f.seek(member.header_offset)
            local = f.read(30)
            if member.compress_type != zipfile.ZIP_STORED:
                raise missing(NAME, folder, how, f"{path.name} is compressed; fewshot reads the uncompressed .npz "
                                                 "(np.savez) in place: re-save it with np.savez")
            if local[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile("no local header where the directory points")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(member.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(f)
            offset = f.tell()
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (KeyError, zipfile.BadZipFile, OSError, ValueError, struct.error) as e:
        raise missing(NAME, folder, how, f"{path.name} is not a readable .npz holding images.npy ({e})") from None
    if dtype != np.uint8 or fortran or len(shape) != 4 or shape[0] != count or shape[3] != 3 \
            or offset + int(np.prod(shape)) > len(mapped):
        raise missing(NAME, folder, how, f"{path.name} holds images of shape {shape} and dtype {dtype}, not "
                                         f"({count:,}, h, w, 3) uint8")
    return np.frombuffer(mapped, dtype=np.uint8, count=int(np.prod(shape)), offset=offset).reshape(shape)
