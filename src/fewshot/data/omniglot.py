"""Omniglot (Lake et al., 2015): 1,623 handwritten characters from 50 alphabets, 20 drawings each.

Read from the official archives ``images_background.zip`` and ``images_evaluation.zip``
(or their extracted folders) under ``<data root>/omniglot/``. The first load decodes the
PNGs once, resizes them (Lanczos) and inverts them so strokes are bright on a dark
background, and caches the result as one safetensors file keyed by a hash of the
archives and the image size; later loads take a fraction of a second.

Splits:

* ``vinyals``: ``train`` / ``val`` / ``test`` / ``trainval`` from the split files of
  Vinyals et al. (2016), 1028 / 172 / 423 / 1200 characters (four times as many classes
  with rotations). This is the split of most few-shot papers.
* ``background``: the 30 background alphabets to ``train``, the 20 evaluation
  alphabets to ``test`` (Lake et al.'s own division). It has no ``val`` split unless
  ``val_alphabets=N`` holds N background alphabets out as one: evenly spaced in sorted
  order (a fixed choice, recorded in ``info``), trained on by no one.

With ``rotations=True`` (the default, as in the papers) each character rotated by 0, 90,
180 and 270 degrees counts as a class of its own. ``held_out_rotations=False`` keeps
those rotated classes for training only: the ``val`` and ``test`` splits then hold the
upright characters alone, as in Lake et al.'s one-shot protocol, which has no
rotations (Lake, Salakhutdinov and Tenenbaum, Science 2015, "Human-level concept
learning through probabilistic program induction"; no arXiv version).

Every class belongs to its alphabet (``class_groups``), so episodes can be drawn within
one alphabet (``EpisodeSampler(..., within_groups=True)``): Lake et al.'s 20-way
within-alphabet one-shot classification.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from ..progress import track

from ..errors import CheckpointError, ConfigError, DataError
from ..io import load_tensors, parse_json, read_bounded, save_tensors
from .archives import ReadBudget, check_name
from .base import DATASETS, ClassDataset
from .download import cache_dir, data_root, ensure_files
from .images import decode_image

BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
ARCHIVES = {
    "images_background.zip": (BASE_URL + "images_background.zip", "68d2efa1b9178cc56df9314c21c6e718"),
    "images_evaluation.zip": (BASE_URL + "images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811"),
}
SPLIT_URL = "https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/data/omniglot/splits/vinyals/"
VINYALS_SPLITS = ("train", "val", "test", "trainval")
SPLIT_SCHEMES = ("vinyals", "background")
ROTATIONS = (0, 90, 180, 270)
_IMAGE_PATH = re.compile(r"^(images_background|images_evaluation)/([^/]+)/(character\d+)/(\d+)_(\d+)\.png$")


@DATASETS.register("omniglot")
def load_omniglot(root: str | Path | None = None, *, image_size: int = 28, rotations: bool = True,
                  split_scheme: str = "vinyals", val_alphabets: int = 0,
                  held_out_rotations: bool = True) -> ClassDataset:
    """Load Omniglot as a :class:`ClassDataset` (see the module docstring for the options)."""
    if split_scheme not in SPLIT_SCHEMES:
        raise ConfigError(f"unknown Omniglot split scheme '{split_scheme}'; choose one of {', '.join(SPLIT_SCHEMES)}")
    if not 4 <= int(image_size) <= 105:
        raise ConfigError(f"Omniglot image size must be between 4 and 105 pixels, got {image_size}")
    if val_alphabets and split_scheme != "background":
        raise ConfigError(f"val_alphabets holds background alphabets out of the 'background' split scheme; "
                          f"the '{split_scheme}' scheme has its own val split: drop val_alphabets")
    folder = data_root(root) / "omniglot"
    sources = _sources(folder)
    images, labels, names, sets = _decoded(sources, int(image_size), cache_dir(folder.parent))
    if rotations:
        images, labels, names = _with_rotations(images, labels, names)
        sets = [s for s in sets for _ in ROTATIONS]
    splits = _splits(folder, names, sets, split_scheme, rotations)
    info = {"source": str(folder), "rotations": rotations, "split_scheme": split_scheme}
    if val_alphabets:
        splits, info["val_alphabets"] = _hold_out_alphabets(names, splits, int(val_alphabets))
    if rotations and not held_out_rotations:
        # Rotated copies stay training classes; held-out splits keep the upright characters.
        splits = {split: [c for c in classes if names[c].endswith("/rot000")] if split in ("val", "test") else classes
                  for split, classes in splits.items()}
        info["held_out_rotations"] = False
    groups = [name.split("/", 1)[0] for name in names]  # "Alphabet/characterNN[/rotDDD]": the alphabet
    return ClassDataset("omniglot", images, labels, names, splits, info, class_groups=groups)


def _hold_out_alphabets(names: list[str], splits: dict[str, list[int]], count: int):
    """``splits`` with ``count`` of the training alphabets moved to a ``val`` split, and their names.

    Evenly spaced in sorted order rather than random: the choice is the same on every
    machine and for every seed, and spread over the alphabet list."""
    alphabets = sorted({names[c].split("/", 1)[0] for c in splits["train"]})
    if not 1 <= count < len(alphabets):
        raise ConfigError(f"val_alphabets must be between 1 and {len(alphabets) - 1} (the background set has "
                          f"{len(alphabets)} alphabets), got {count}")
    held = {alphabets[int((i + 0.5) * len(alphabets) / count)] for i in range(count)}
    train = [c for c in splits["train"] if names[c].split("/", 1)[0] not in held]
    val = [c for c in splits["train"] if names[c].split("/", 1)[0] in held]
    return {**splits, "train": train, "val": val}, sorted(held)


def _sources(folder: Path) -> list[Path]:
    """The two archives, or their extracted folders, downloading what is missing."""
    found = []
    for name in ARCHIVES:
        extracted = folder / name.removesuffix(".zip")
        found.append(extracted if extracted.is_dir() and not (folder / name).exists() else folder / name)
    missing = {p.name: ARCHIVES[p.name] for p in found if p.suffix == ".zip" and not p.exists()}
    if missing:
        ensure_files(folder, missing, dataset="omniglot")
    return found


def _fingerprint(sources: list[Path], image_size: int) -> str:
    digest = hashlib.sha256(f"omniglot-v1-{image_size}".encode())
    for source in sources:
        if source.is_dir():
            for path in sorted(source.rglob("*.png")):
                digest.update(f"{path.relative_to(source)}:{path.stat().st_size}".encode())
        else:
            with open(source, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()[:16]


def _decoded(sources: list[Path], image_size: int, cache: Path):
    """Decoded images ``(n, 1, s, s)`` uint8, labels, class names and their set, cached."""
    key = _fingerprint(sources, image_size)
    cache_file = cache / f"omniglot-{image_size}px-{key}.safetensors"
    if cache_file.exists():
        try:
            tensors = load_tensors(cache_file)
            meta = parse_json(bytes(tensors["meta"].tolist()), str(cache_file))
            return tensors["images"], tensors["labels"], meta["names"], meta["sets"]
        except (CheckpointError, KeyError, ValueError):
            # A damaged cache is only a cache: decode the archives again and rewrite it.
            warnings.warn(f"{cache_file} is damaged; decoding the Omniglot archives again", stacklevel=2)
    images, labels, names, sets = [], [], [], []
    for source in sources:
        entries = _image_entries(source)
        for (set_name, alphabet, character), files in track(entries.items(), desc=f"decoding {source.name}",
                                                            unit="char"):
            class_id = len(names)
            names.append(f"{alphabet}/{character}")
            sets.append(set_name)
            for label, read in files:
                images.append(_decode(read(), image_size, label))
                labels.append(class_id)
    images_t = torch.from_numpy(np.stack(images)[:, None])
    labels_t = torch.tensor(labels, dtype=torch.int64)
    meta = torch.tensor(list(json.dumps({"names": names, "sets": sets}).encode()), dtype=torch.uint8)
    save_tensors(cache_file, {"images": images_t, "labels": labels_t, "meta": meta})
    return images_t, labels_t, names, sets


def _image_entries(source: Path) -> dict:
    """``{(set, alphabet, character): [(path label, reader), ...]}`` in the official order."""
    set_name = source.name.removesuffix(".zip")
    entries: dict = {}
    if source.is_dir():
        items = [(f"{set_name}/{p.relative_to(source).as_posix()}", p.read_bytes)
                 for p in source.rglob("*.png")]
    else:
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{source} is not a readable zip archive ({e}); replace it with the official file") from None
        # Members are read into memory, never extracted, within a budget (see fewshot.data.archives).
        budget = ReadBudget(source)
        for name in archive.namelist():
            check_name(name, source)
            budget.count(name)
        items = [(n, (lambda n=n: _read_member(archive, n, budget))) for n in archive.namelist() if n.endswith(".png")]
    for name, reader in items:
        match = _IMAGE_PATH.match(name)
        if not match or match.group(1) != set_name:
            raise DataError(
                f"{source}: unexpected entry '{name}'; Omniglot archives hold "
                f"{set_name}/<Alphabet>/characterNN/<id>_<drawer>.png"
            )
        _, alphabet, character, char_id, drawer = match.groups()
        entries.setdefault((set_name, alphabet, character), []).append((int(drawer), f"{source}:{name}", reader))
    if not entries:
        raise DataError(f"{source} holds no Omniglot images; expected {set_name}/<Alphabet>/characterNN/*.png")
    return {key: [(label, reader) for _, label, reader in sorted(entries[key], key=lambda e: e[0])]
            for key in sorted(entries)}


def _read_member(archive: zipfile.ZipFile, name: str, budget: ReadBudget) -> bytes:
    try:
        with archive.open(name) as handle:
            return budget.read(handle, name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as e:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression.
        raise DataError(f"{archive.filename}:{name} cannot be read ({e}); the archive is damaged: "
                        "replace it with the official file") from None


def _decode(data: bytes, image_size: int, label: str) -> np.ndarray:
    return 255 - decode_image(data, "L", image_size, label)


def _with_rotations(images: torch.Tensor, labels: torch.Tensor, names: list[str]):
    """Each character at 0/90/180/270 degrees (counter-clockwise) as four classes."""
    rotated = torch.stack([torch.rot90(images, k, dims=(2, 3)) for k in range(len(ROTATIONS))], dim=1)
    n = len(images)
    rot_labels = (labels[:, None] * len(ROTATIONS) + torch.arange(len(ROTATIONS))[None, :])
    rot_names = [f"{name}/rot{angle:03d}" for name in names for angle in ROTATIONS]
    return rotated.reshape(n * len(ROTATIONS), *images.shape[1:]), rot_labels.reshape(-1), rot_names


def _splits(folder: Path, names: list[str], sets: list[str], scheme: str, rotations: bool) -> dict[str, list[int]]:
    if scheme == "background":
        return {
            "train": [i for i, s in enumerate(sets) if s == "images_background"],
            "test": [i for i, s in enumerate(sets) if s == "images_evaluation"],
        }
    split_dir = folder / "splits" / "vinyals"
    files = {f"{s}.txt": (SPLIT_URL + f"{s}.txt", None) for s in VINYALS_SPLITS}
    ensure_files(split_dir, files, dataset="omniglot (Vinyals split files)")
    index = {name: i for i, name in enumerate(names)}
    splits = {}
    for split in VINYALS_SPLITS:
        # The largest split file is about 40 kB; a bounded read refuses anything else.
        text = read_bounded(split_dir / f"{split}.txt", 1 << 20, DataError).decode(errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not rotations:
            lines = [line.rsplit("/", 1)[0] for line in lines if line.endswith("/rot000")]
        unknown = [line for line in lines if line not in index]
        if unknown:
            raise DataError(
                f"{split_dir / (split + '.txt')} names {len(unknown)} classes not in the archives "
                f"(first: '{unknown[0]}'); the split files do not match these archives"
            )
        splits[split] = [index[line] for line in lines]
    return splits
