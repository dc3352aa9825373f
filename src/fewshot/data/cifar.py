"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) and the few-shot benchmarks built on CIFAR-100.

All read the official python archives under ``<data root>/cifar100/`` and
``<data root>/cifar10/`` (or their extracted folders), downloaded with their checksums
when missing. The official train and test sets are pooled (600 images per CIFAR-100
class, 6,000 per CIFAR-10 class); images are ``(n, 3, 32, 32)`` uint8.

* ``cifar-fs`` (Bertinetto, Henriques, Torr & Vedaldi, 2019, "Meta-learning with
  differentiable closed-form solvers"): 64 / 16 / 20 ``train`` / ``val`` / ``test``
  classes drawn at random from CIFAR-100, the lists published with the paper's code.
* ``fc100`` (Oreshkin, Rodríguez & Lacoste, 2018, "TADAM"): the split by superclass,
  12 / 4 / 4 superclasses (60 / 20 / 20 classes), so test classes share no superclass
  with training classes.
* ``cifar10``: the 10 classes, ``train`` = 0-4 and ``test`` = 5-9.

The archives hold Python pickles. They are read member by member straight from the
tar.gz, never extracted, within the bounds of :mod:`fewshot.data.archives`, and
unpickled by :class:`SafeUnpickler`, which can build only plain containers and uint8
numpy arrays, so a tampered archive cannot run code.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..errors import DataError
from .archives import ReadBudget, check_member
from .base import DATASETS, ClassDataset
from .download import data_root, ensure_files

CIFAR100_FILES = {"cifar-100-python.tar.gz": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                                              "eb9058c3a382ffc7106e4002c42a8d85")}
CIFAR10_FILES = {"cifar-10-python.tar.gz": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                                            "c58f30108f718f92721af3b95e74349a")}
CIFAR100_MEMBERS = ("train", "test", "meta")
CIFAR10_MEMBERS = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                   "test_batch", "batches.meta")

# The split files of Bertinetto et al. (github.com/bertinetto/r2d2), as class names.
CIFAR_FS_SPLITS = {
    "train": (
        "dolphin", "seal", "aquarium_fish", "ray", "trout", "orchid", "sunflower", "tulip", "bottle", "bowl",
        "can", "cup", "plate", "apple", "mushroom", "orange", "pear", "clock", "keyboard", "chair", "couch",
        "bee", "caterpillar", "cockroach", "bear", "lion", "tiger", "wolf", "bridge", "castle", "house", "road",
        "skyscraper", "cloud", "forest", "mountain", "elephant", "kangaroo", "porcupine", "possum", "raccoon",
        "skunk", "lobster", "spider", "boy", "girl", "dinosaur", "lizard", "snake", "turtle", "hamster",
        "mouse", "rabbit", "shrew", "squirrel", "oak_tree", "palm_tree", "pine_tree", "willow_tree", "bus",
        "train", "lawn_mower", "streetcar", "tank",
    ),
    "val": (
        "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly", "sea", "camel",
        "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor",
    ),
    "test": (
        "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard", "plain",
        "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle", "pickup_truck", "rocket",
    ),
}

# Oreshkin et al.'s superclass assignment (CIFAR-100 coarse labels 1-6, 9, 10, 15, 17-19
# to train; 8, 11, 13, 16 to val; 0, 7, 12, 14 to test).
FC100_SUPERCLASSES = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
        "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles",
        "trees", "vehicles_1", "vehicles_2",
    ),
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}


@DATASETS.register("cifar-fs")
def load_cifar_fs(root: str | Path | None = None) -> ClassDataset:
    """CIFAR-FS: CIFAR-100 with the class split of Bertinetto et al. (2019)."""
    images, fine, _, fine_names, _, source = _cifar100(root)
    index = {name: i for i, name in enumerate(fine_names)}
    splits = {}
    for split, names in CIFAR_FS_SPLITS.items():
        unknown = [n for n in names if n not in index]
        if unknown:
            raise DataError(f"{source} has no CIFAR-100 class '{unknown[0]}' (of {len(unknown)} unknown); "
                            "replace it with the official cifar-100-python.tar.gz")
        splits[split] = sorted(index[n] for n in names)
    splits["trainval"] = sorted(splits["train"] + splits["val"])
    return ClassDataset("cifar-fs", images, fine, fine_names, splits, {"source": str(source)})


@DATASETS.register("fc100")
def load_fc100(root: str | Path | None = None) -> ClassDataset:
    """FC100: CIFAR-100 split by superclass as in Oreshkin et al. (2018)."""
    images, fine, coarse, fine_names, coarse_names, source = _cifar100(root)
    pairs = np.unique(np.stack([fine.numpy(), coarse.numpy()], axis=1), axis=0)
    if len(np.unique(pairs[:, 0])) != len(pairs):
        raise DataError(f"{source} gives some class more than one superclass; "
                        "replace it with the official cifar-100-python.tar.gz")
    superclass_of = {int(f): coarse_names[int(c)] for f, c in pairs}
    splits = {}
    for split, superclasses in FC100_SUPERCLASSES.items():
        unknown = [s for s in superclasses if s not in coarse_names]
        if unknown:
            raise DataError(f"{source} has no CIFAR-100 superclass '{unknown[0]}'; "
                            "replace it with the official cifar-100-python.tar.gz")
        splits[split] = sorted(f for f, s in superclass_of.items() if s in superclasses)
    splits["trainval"] = sorted(splits["train"] + splits["val"])
    return ClassDataset("fc100", images, fine, fine_names, splits, {"source": str(source)})


@DATASETS.register("cifar10")
def load_cifar10(root: str | Path | None = None) -> ClassDataset:
    """CIFAR-10, all 60,000 images; ``train`` = classes 0-4, ``test`` = classes 5-9."""
    folder = data_root(root) / "cifar10"
    source, members = _read_members(folder, "cifar-10-python.tar.gz", "cifar-10-batches-py", CIFAR10_MEMBERS,
                                    CIFAR10_FILES, "cifar10")
    names = _names(members["batches.meta"], b"label_names", source)
    batches = [members[m] for m in CIFAR10_MEMBERS if m != "batches.meta"]
    images = _images(batches, source)
    labels = _labels(batches, b"labels", len(names), source)
    splits = {"train": [0, 1, 2, 3, 4], "test": [5, 6, 7, 8, 9]}
    return ClassDataset("cifar10", images, labels, names, splits, {"source": str(source)})


def _cifar100(root):
    """Images, fine and coarse labels, fine and coarse names, and the source path."""
    folder = data_root(root) / "cifar100"
    source, members = _read_members(folder, "cifar-100-python.tar.gz", "cifar-100-python", CIFAR100_MEMBERS,
                                    CIFAR100_FILES, "cifar100")
    fine_names = _names(members["meta"], b"fine_label_names", source)
    coarse_names = _names(members["meta"], b"coarse_label_names", source)
    sets = [members["train"], members["test"]]
    images = _images(sets, source)
    fine = _labels(sets, b"fine_labels", len(fine_names), source)
    coarse = _labels(sets, b"coarse_labels", len(coarse_names), source)
    return images, fine, coarse, fine_names, coarse_names, source


def _read_members(folder: Path, archive: str, prefix: str, wanted: tuple[str, ...], files: dict,
                  dataset: str) -> tuple[Path, dict[str, dict]]:
    """The unpickled ``wanted`` members of ``archive`` (or of its extracted folder ``prefix``)."""
    extracted = folder / prefix
    if extracted.is_dir() and not (folder / archive).exists():
        missing = [m for m in wanted if not (extracted / m).is_file()]
        if missing:
            raise DataError(f"{extracted} lacks {', '.join(missing)}; extract the official {archive} there again")
        return extracted, {m: unpickle((extracted / m).read_bytes(), str(extracted / m)) for m in wanted}
    path = ensure_files(folder, files, dataset=dataset)[0]
    found = {}
    budget = ReadBudget(path)
    try:
        # Stream mode reads the gzip once, front to back: members are decoded in passing.
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                name = check_member(member, path)
                budget.count(member.name)
                if member.isfile() and name.parent == PurePosixPath(prefix) and name.name in wanted:
                    handle = tar.extractfile(member)
                    found[name.name] = unpickle(budget.read(handle, member.name), f"{path}:{member.name}")
                else:
                    budget.charge(member.size, member.name)  # the stream inflates it to pass over it
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path} is not a readable tar.gz archive ({e}); replace it with the official file") from None
    missing = [m for m in wanted if m not in found]
    if missing:
        raise DataError(f"{path} lacks {', '.join(prefix + '/' + m for m in missing)}; "
                        f"replace it with the official {archive}")
    return path, found


class SafeUnpickler(pickle.Unpickler):
    """Unpickles plain data and uint8 numpy arrays, and refuses every other global.

    The official archives were written by Python 2 with numpy 1: an array is rebuilt
    from ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``.
    Those three names are the only ones allowed, and each resolves to a stand-in that
    can build nothing but a plain uint8 array.
    """

    def __init__(self, data: bytes, label: str):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.label = label

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct
        if (module, name) == ("numpy", "dtype"):
            return _uint8_dtype
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY
        raise DataError(f"{self.label} refers to {module}.{name}, which a CIFAR archive never does; "
                        "refusing to unpickle it: replace the archive with the official file")


# What ``numpy.ndarray`` resolves to: a token only ``_reconstruct`` accepts, so the
# pickle cannot call the real constructor (and make, say, an object array).
_NDARRAY = object()


def _reconstruct(subtype, shape, typecode):
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("array subtype is not numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _uint8_dtype(spec, align=False, copy=False):
    # Only bytes: an object dtype would let the pickle nest arbitrary objects.
    if spec not in ("u1", b"u1", "|u1", b"|u1"):
        raise pickle.UnpicklingError(f"array dtype {spec!r} is not uint8")
    # A copy, as numpy's own pickles ask: the BUILD that follows must not alter numpy's
    # shared uint8 dtype.
    return np.dtype(np.uint8, copy=True)


def unpickle(data: bytes, label: str) -> dict:
    """One CIFAR batch or meta file as a dict with bytes keys, via :class:`SafeUnpickler`."""
    try:
        obj = SafeUnpickler(data, label).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, MemoryError) as e:
        raise DataError(f"{label} is not a readable CIFAR pickle ({e}); "
                        "replace the archive with the official file") from None
    if not isinstance(obj, dict):
        raise DataError(f"{label} holds a {type(obj).__name__}, not a dict; replace the archive with the official file")
    return obj


def _field(batch: dict, key: bytes, source: Path):
    # Python 2 strings come back as bytes; a re-pickled copy may have str keys.
    for k in (key, key.decode()):
        if k in batch:
            return batch[k]
    raise DataError(f"{source}: a batch lacks the '{key.decode()}' entry; replace it with the official archive")


def _names(meta: dict, key: bytes, source: Path) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in _field(meta, key, source)]


def _data(batch: dict, source: Path) -> np.ndarray:
    """A batch's images as ``(n, 3, 32, 32)`` uint8."""
    data = _field(batch, b"data", source)
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % 3072:
        raise DataError(f"{source}: image data must be uint8 rows of 3072 values (3×32×32), got "
                        f"{getattr(data, 'dtype', type(data).__name__)}; replace it with the official archive")
    # Each row is the red plane, then green, then blue, each 32×32 row-major.
    return data.reshape(-1, 3, 32, 32)


def _images(batches: list[dict], source: Path) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([_data(batch, source) for batch in batches]))


def _labels(batches: list[dict], key: bytes, n_classes: int, source: Path) -> torch.Tensor:
    parts = []
    for batch in batches:
        labels = np.asarray(_field(batch, key, source), dtype=np.int64).reshape(-1)
        n_images = len(_data(batch, source))
        if len(labels) != n_images:
            raise DataError(f"{source}: a batch has {n_images} images but {len(labels)} '{key.decode()}'; "
                            "replace it with the official archive")
        if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
            raise DataError(f"{source}: '{key.decode()}' go beyond the {n_classes} named classes; "
                            "replace it with the official archive")
        parts.append(labels)
    return torch.from_numpy(np.concatenate(parts))
