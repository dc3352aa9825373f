"""MNIST, CIFAR and folder loaders on tiny archives in the official formats; the sinusoid family."""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.data import DATASETS, SinusoidSampler, load_dataset
from fewshot.data.cifar import CIFAR_FS_SPLITS, FC100_SUPERCLASSES, load_cifar10, load_cifar_fs, load_fc100
from fewshot.data.folder import load_folder
from fewshot.data.mnist import load_mnist
from fewshot.errors import ConfigError, DataError

# The official CIFAR-100 names, in the order of its 'meta' file.
FINE = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant
flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel
streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
willow_tree wolf woman worm""".split()
COARSE = """aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices
household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes
large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1
vehicles_2""".split()
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# -- helpers: files in the official formats -------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes() + array.tobytes()


def py2_pickle(obj) -> bytes:
    """``obj`` pickled as Python 2's cPickle (protocol 2) wrote the official CIFAR files.

    Python 3 cannot write that form itself: its protocol-2 bytes go through
    ``_codecs.encode``, and its arrays name ``numpy._core``. Strings become py2 ``str``
    (SHORT_BINSTRING / BINSTRING), which Python 3 reads back as bytes.
    """
    out = bytearray(b"\x80\x02")
    w = out.extend

    def put(o):
        if o is None:
            w(b"N")
        elif isinstance(o, bool):
            w(b"\x88" if o else b"\x89")
        elif isinstance(o, (int, np.integer)):
            w(b"J" + struct.pack("<i", int(o)))
        elif isinstance(o, (bytes, str)):
            data = o.encode() if isinstance(o, str) else o
            w((b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<i", len(data))) + data)
        elif isinstance(o, tuple):
            w(b"(")
            for x in o:
                put(x)
            w(b"t")
        elif isinstance(o, list):
            w(b"](")
            for x in o:
                put(x)
            w(b"e")
        elif isinstance(o, dict):
            w(b"}(")
            for k, v in o.items():
                put(k)
                put(v)
            w(b"u")
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            w(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            put((0,))
            put(b"b")
            w(b"\x87R(")  # _reconstruct(ndarray, (0,), 'b'), then its state
            put(1)
            put(tuple(o.shape))
            w(b"cnumpy\ndtype\n")
            put((b"u1", 0, 1))
            w(b"R")
            put((3, b"|", None, None, None, -1, -1, 0))
            w(b"b")
            put(False)
            put(o.tobytes())
            w(b"tb")
        else:
            raise TypeError(type(o))

    put(obj)
    w(b".")
    return bytes(out)


def dumps(obj, style: str) -> bytes:
    return py2_pickle(obj) if style == "py2" else pickle.dumps(obj, protocol=4)


def write_tar(path: Path, members: dict[str, bytes], *, links: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for folder in sorted({name.split("/")[0] for name in members if "/" in name}):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def cifar_images(labels: list[int], seed: int) -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    data[:, 0] = labels  # the first red pixel spells the label, to check images follow their labels
    return data


def cifar100_members(style: str = "py2") -> dict[str, bytes]:
    """All 100 classes, one train and one test image each; superclass = class % 20."""
    members = {}
    for set_name, seed in (("train", 1), ("test", 2)):
        fine = list(np.random.default_rng(seed).permutation(100))
        members[f"cifar-100-python/{set_name}"] = dumps({
            b"filenames": [f"img_{i}.png".encode() for i in range(100)], b"batch_label": set_name.encode(),
            b"fine_labels": [int(f) for f in fine], b"coarse_labels": [int(f) % 20 for f in fine],
            b"data": cifar_images(fine, seed),
        }, style)
    members["cifar-100-python/meta"] = dumps(
        {b"fine_label_names": [n.encode() for n in FINE], b"coarse_label_names": [n.encode() for n in COARSE]}, style)
    return members


def cifar10_members() -> dict[str, bytes]:
    members = {}
    for b, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                              "test_batch"]):
        labels = [(b + i) % 10 for i in range(10)]
        members[f"cifar-10-batches-py/{name}"] = py2_pickle({
            b"batch_label": name.encode(), b"labels": labels, b"data": cifar_images(labels, b),
            b"filenames": [f"{i}.png".encode() for i in range(10)]})
    members["cifar-10-batches-py/batches.meta"] = py2_pickle(
        {b"label_names": [n.encode() for n in CIFAR10], b"num_cases_per_batch": 10, b"num_vis": 3072})
    return members


class Exploit:
    """Pickles into a call of os.system: what a tampered archive would try."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# -- MNIST -----------------------------------------------------------------------------------

def write_mnist(folder: Path, gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.repeat(np.arange(10, dtype=np.uint8), 3),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.repeat(np.arange(10, dtype=np.uint8), 2)[::-1].copy(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        (folder / (name + ".gz")).write_bytes(gzip.compress(data)) if gz else (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files(tmp_root, gz):
    arrays = write_mnist(tmp_root / "mnist", gz=gz)
    dataset = load_dataset("mnist", tmp_root)
    assert dataset.images.dtype == torch.uint8 and dataset.images.shape == (50, 1, 28, 28)
    assert dataset.class_names == [str(d) for d in range(10)]
    assert dataset.splits == {"train": [0, 1, 2, 3, 4], "test": [5, 6, 7, 8, 9]}
    assert (dataset.class_counts == 5).all()
    # Class 7: three images from the train file, then two from t10k.
    train_7 = arrays["train-images-idx3-ubyte"][arrays["train-labels-idx1-ubyte"] == 7]
    test_7 = arrays["t10k-images-idx3-ubyte"][arrays["t10k-labels-idx1-ubyte"] == 7]
    np.testing.assert_array_equal(dataset.class_images(7)[:, 0].numpy(), np.concatenate([train_7, test_7]))


def test_mnist_image_size(tmp_root):
    write_mnist(tmp_root / "mnist")
    assert load_mnist(tmp_root, image_size=14).image_shape == (1, 14, 14)
    assert load_mnist(tmp_root, image_size=32).image_shape == (1, 32, 32)
    with pytest.raises(ConfigError, match="image size"):
        load_mnist(tmp_root, image_size=1)


def test_mnist_bad_magic_names_the_file(tmp_root):
    write_mnist(tmp_root / "mnist")
    bad = tmp_root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 2), np.uint8))))  # 2-d where labels are 1-d
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz is not an idx file of 1-d unsigned bytes"):
        load_mnist(tmp_root)


def test_mnist_truncated_and_mismatched_files(tmp_root):
    write_mnist(tmp_root / "mnist")
    path = tmp_root / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((30, 28, 28), np.uint8))[:-5]))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz declares shape \(30, 28, 28\)"):
        load_mnist(tmp_root)
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((29, 28, 28), np.uint8))))
    with pytest.raises(DataError, match="29 images but .* 30 labels"):
        load_mnist(tmp_root)
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz cannot be read"):
        load_mnist(tmp_root)


# -- CIFAR -----------------------------------------------------------------------------------

def test_cifar_fs_lists_are_the_100_official_classes():
    names = [n for split in CIFAR_FS_SPLITS.values() for n in split]
    assert sorted(names) == FINE and len(names) == 100
    assert [len(CIFAR_FS_SPLITS[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    supers = [n for split in FC100_SUPERCLASSES.values() for n in split]
    assert sorted(supers) == sorted(COARSE)
    assert [COARSE.index(s) for s in FC100_SUPERCLASSES["test"]] == [0, 7, 12, 14]
    assert [COARSE.index(s) for s in FC100_SUPERCLASSES["val"]] == [8, 11, 13, 16]


@pytest.mark.parametrize("style", ["py2", "protocol4"])
def test_cifar_fs_reads_the_archive(tmp_root, style):
    write_tar(tmp_root / "cifar100" / "cifar-100-python.tar.gz", cifar100_members(style))
    dataset = load_dataset("cifar-fs", tmp_root)
    assert dataset.images.dtype == torch.uint8 and dataset.images.shape == (200, 3, 32, 32)
    assert dataset.class_names == FINE and (dataset.class_counts == 2).all()
    assert {s: len(c) for s, c in dataset.splits.items()} == {"train": 64, "val": 16, "test": 20, "trainval": 80}
    assert {FINE[c] for c in dataset.splits["test"]} == set(CIFAR_FS_SPLITS["test"])
    # Every image sits under its own label, and the channel planes are in the official order.
    assert torch.equal(dataset.images[:, 0, 0, 0].long(), dataset.labels)
    whale = FINE.index("whale")
    train = pickle.loads(cifar100_members("protocol4")["cifar-100-python/train"])
    row = train[b"data"][train[b"fine_labels"].index(whale)]
    np.testing.assert_array_equal(dataset.class_images(whale)[0].numpy(), row.reshape(3, 32, 32))


def test_fc100_splits_by_superclass(tmp_root):
    write_tar(tmp_root / "cifar100" / "cifar-100-python.tar.gz", cifar100_members())
    dataset = load_fc100(tmp_root)
    assert {s: len(c) for s, c in dataset.splits.items()} == {"train": 60, "val": 20, "test": 20, "trainval": 80}
    # The fake archive puts class f in superclass f % 20.
    for split, superclasses in FC100_SUPERCLASSES.items():
        assert {COARSE[c % 20] for c in dataset.splits[split]} == set(superclasses)


def test_cifar10_reads_the_archive(tmp_root):
    write_tar(tmp_root / "cifar10" / "cifar-10-python.tar.gz", cifar10_members())
    dataset = load_cifar10(tmp_root)
    assert dataset.images.shape == (60, 3, 32, 32) and dataset.class_names == CIFAR10
    assert (dataset.class_counts == 6).all() and torch.equal(dataset.images[:, 0, 0, 0].long(), dataset.labels)
    assert dataset.splits == {"train": [0, 1, 2, 3, 4], "test": [5, 6, 7, 8, 9]}


def test_cifar_extracted_folder_is_read(tmp_root):
    for name, data in cifar100_members().items():
        path = tmp_root / "cifar100" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert load_cifar_fs(tmp_root).images.shape == (200, 3, 32, 32)


def test_forbidden_global_is_refused_and_never_runs(tmp_root, tmp_path):
    marker = tmp_path / "pwned"
    members = cifar100_members()
    members["cifar-100-python/meta"] = pickle.dumps({b"fine_label_names": Exploit(marker)}, protocol=4)
    write_tar(tmp_root / "cifar100" / "cifar-100-python.tar.gz", members)
    with pytest.raises(DataError, match=r"cifar-100-python/meta refers to (posix|nt|os)\.system"):
        load_cifar_fs(tmp_root)
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_root):
    members = cifar100_members("protocol4")
    members["cifar-100-python/test"] = pickle.dumps({b"data": np.array([1, "x"], dtype=object)}, protocol=4)
    write_tar(tmp_root / "cifar100" / "cifar-100-python.tar.gz", members)
    with pytest.raises(DataError, match=r"cifar-100-python/test is not a readable CIFAR pickle .*not uint8"):
        load_cifar_fs(tmp_root)


@pytest.mark.parametrize("bad_name", ["cifar-100-python/../../evil", "/tmp/evil", "../cifar-100-python/train"])
def test_tar_member_outside_the_archive_is_refused(tmp_root, bad_name):
    members = {bad_name: b"x", **cifar100_members()}
    write_tar(tmp_root / "cifar100" / "cifar-100-python.tar.gz", members)
    with pytest.raises(DataError, match=r"absolute or '\.\.' path"):
        load_cifar_fs(tmp_root)


def test_tar_link_is_refused(tmp_root):
    write_tar(tmp_root / "cifar100" / "cifar-100-python.tar.gz", cifar100_members(),
              links={"cifar-100-python/extra": "/etc/passwd"})
    with pytest.raises(DataError, match=r"'cifar-100-python/extra', a link or special file"):
        load_cifar_fs(tmp_root)


def test_incomplete_or_damaged_archives(tmp_root):
    members = cifar100_members()
    del members["cifar-100-python/meta"]
    archive = write_tar(tmp_root / "cifar100" / "cifar-100-python.tar.gz", members)
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz lacks cifar-100-python/meta"):
        load_cifar_fs(tmp_root)
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz is not a readable tar\.gz archive"):
        load_cifar_fs(tmp_root)
    archive.write_bytes(b"plain text")
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz is not a readable tar\.gz archive"):
        load_cifar_fs(tmp_root)


def test_missing_archive_offline_says_where_to_put_it(tmp_root, monkeypatch):
    monkeypatch.setenv("FEWSHOT_OFFLINE", "1")
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz not found in .*cifar10.*Put them there"):
        load_cifar10(tmp_root)


# -- folder ----------------------------------------------------------------------------------

def write_folder(folder: Path) -> Path:
    """Three classes in mixed formats, sizes and modes, plus files that are not images."""
    colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}
    for i, (name, colour) in enumerate(colours.items()):
        (folder / name).mkdir(parents=True)
        for j, (ext, size, mode) in enumerate([(".png", (40, 30), "RGB"), (".jpg", (16, 16), "RGB"),
                                              (".PNG", (20, 20), "RGBA"), (".bmp", (8, 12), "L")][: 2 + i]):
            Image.new(mode, size, colour if mode != "L" else 128).save(folder / name / f"{j:02d}{ext}")
    (folder / "cat" / "notes.txt").write_text("not an image")
    (folder / "cat" / ".hidden.png").write_bytes(b"junk")
    (folder / ".cache").mkdir()
    (folder / "README.md").write_text("top-level files are ignored")
    return folder


def test_folder_happy_path(tmp_root, tmp_path):
    path = write_folder(tmp_path / "mine")
    dataset = load_dataset("folder", tmp_root, path=str(path), image_size=16)
    assert dataset.class_names == ["cat", "dog", "emu"] and dataset.class_counts.tolist() == [2, 3, 4]
    assert dataset.images.dtype == torch.uint8 and dataset.images.shape == (9, 3, 16, 16)
    cat_png = dataset.class_images(0)[0]
    assert cat_png[0].eq(255).all() and cat_png[1:].eq(0).all()
    assert dataset.class_images(2)[3].eq(128).all()  # the grey bmp, expanded to RGB
    gray = load_folder(tmp_root, path=path, channels=1, image_size=8)
    assert gray.images.shape == (9, 1, 8, 8)
    assert int(gray.class_images(1)[0, 0, 4, 4]) == round(0.587 * 255)  # PIL's luma of pure green


def test_folder_cache_is_reused_and_invalidated(tmp_root, tmp_path):
    path = write_folder(tmp_path / "mine")
    first = load_folder(tmp_root, path=path, image_size=12)
    caches = list((tmp_path / "cache").glob("folder-mine-*.safetensors"))
    assert len(caches) == 1
    assert torch.equal(load_folder(tmp_root, path=path, image_size=12).images, first.images)
    image = path / "dog" / "00.png"
    Image.new("RGB", (10, 10), (1, 2, 3)).save(image)
    os.utime(image, ns=(1, 1))
    again = load_folder(tmp_root, path=path, image_size=12)
    assert again.class_images(1)[0, :, 0, 0].tolist() == [1, 2, 3]


def test_folder_errors(tmp_root, tmp_path):
    with pytest.raises(ConfigError, match="--path DIR"):
        load_dataset("folder", tmp_root)
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_root, path=tmp_path / "nowhere")
    path = write_folder(tmp_path / "mine")
    with pytest.raises(ConfigError, match="channels must be 1"):
        load_folder(tmp_root, path=path, channels=2)
    (path / "fox").mkdir()
    (path / "fox" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder .*fox holds no images"):
        load_folder(tmp_root, path=path)
    (path / "fox" / "00.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(DataError, match=r"fox[/\\]00\.jpg is not a readable image"):
        load_folder(tmp_root, path=path)
    lonely = tmp_path / "lonely"
    (lonely / "only").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(lonely / "only" / "a.png")
    with pytest.raises(DataError, match="has 1 class sub-folder"):
        load_folder(tmp_root, path=lonely)


def test_registry():
    assert {"mnist", "cifar-fs", "fc100", "cifar10", "folder"} <= set(DATASETS)
    assert "sinusoid" not in DATASETS


# -- sinusoid --------------------------------------------------------------------------------

def test_sinusoid_episode_shapes_and_determinism():
    sampler = SinusoidSampler(shot=5, query=7, seed=3)
    episode = sampler.episode(4)
    for t, n in ((episode.support_x, 5), (episode.support_y, 5), (episode.query_x, 7), (episode.query_y, 7)):
        assert t.shape == (n, 1) and t.dtype == torch.float32
    assert episode.way == 1 and episode.shot == 5
    again = SinusoidSampler(5, 7, seed=3).episode(4)
    assert torch.equal(episode.support_x, again.support_x) and torch.equal(episode.query_y, again.query_y)
    assert not torch.equal(sampler.episode(5).support_x, episode.support_x)
    assert not torch.equal(SinusoidSampler(5, 7, seed=4).episode(4).support_x, episode.support_x)
    assert [e.support_y.tolist() for e in sampler.batch(2, 3)] == [sampler.episode(6 + j).support_y.tolist()
                                                                   for j in range(3)]
    assert len(list(sampler.suite(4))) == 4


def test_sinusoid_targets_and_parameter_ranges():
    sampler = SinusoidSampler(shot=10, query=10, seed=0)
    tasks = [sampler.task(i) for i in range(500)]
    amplitudes = np.array([t.amplitude for t in tasks])
    phases = np.array([t.phase for t in tasks])
    assert amplitudes.min() >= 0.1 and amplitudes.max() <= 5.0 and np.ptp(amplitudes) > 4.5
    assert phases.min() >= 0.0 and phases.max() <= math.pi and np.ptp(phases) > 3.0
    for i in range(20):
        episode, task = sampler.episode(i), sampler.task(i)
        x = torch.cat([episode.support_x, episode.query_x])
        y = torch.cat([episode.support_y, episode.query_y])
        assert x.min() >= -5.0 and x.max() <= 5.0
        torch.testing.assert_close(y, task.amplitude * torch.sin(x - task.phase), atol=1e-5, rtol=0)
        torch.testing.assert_close(task(x), y, atol=1e-5, rtol=0)


def test_sinusoid_task_does_not_depend_on_shot_or_query():
    assert SinusoidSampler(1, 1, seed=2).task(9) == SinusoidSampler(20, 50, seed=2).task(9)
    assert SinusoidSampler(1, 1, seed=2).task(9) != SinusoidSampler(1, 1, seed=3).task(9)


@pytest.mark.parametrize("shot, query, seed", [(0, 1, 0), (1, -2, 0), (1.5, 1, 0), (True, 1, 0), (1, 1, -1)])
def test_sinusoid_bad_arguments(shot, query, seed):
    with pytest.raises(ConfigError):
        SinusoidSampler(shot, query, seed)
