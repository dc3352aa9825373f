"""mini-ImageNet, tiered-ImageNet and CUB-200-2011 from generated fixtures in each on-disk
layout: tiny images, every class of the real (checksummed) split files, fewer images per
class than the real sets (the expected counts are lowered with monkeypatch)."""

from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.data import load_dataset
from fewshot.data import benchmarks, cub, miniimagenet, safepickle, tieredimagenet
from fewshot.errors import DataError
from fewshot.io import load_tensors

SIZE = 8


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    monkeypatch.delenv("FEWSHOT_DATA", raising=False)


def _pixels(k: int) -> np.ndarray:
    """A distinct flat-colour 8×8 RGB image for index ``k``."""
    return np.full((SIZE, SIZE, 3), [k % 251, (k * 7) % 253, (k * 13) % 255], dtype=np.uint8)


def _png(k: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_pixels(k)).save(buf, "PNG")
    return buf.getvalue()


# -- mini-ImageNet ---------------------------------------------------------------------------

def _mini_classes():
    return miniimagenet.split_classes()


def _mini_images_layout(folder: Path, per_class: int = 2) -> None:
    (folder / "images").mkdir(parents=True)
    k = 0
    for split, classes in _mini_classes().items():
        rows = ["filename,label"]
        for c in classes:
            for j in range(per_class):
                name = f"{c}{j:08d}.jpg"
                (folder / "images" / name).write_bytes(_png(k))  # PNG bytes: lossless, PIL reads by content
                rows.append(f"{name},{c}")
                k += 1
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")


def _mini_pickle_layout(folder: Path, per_class: int = 2, protocol: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    k = 0
    for split, classes in _mini_classes().items():
        images, class_dict = [], {}
        for c in reversed(classes):  # stored in another order: the loader orders by the split lists
            class_dict[c] = []
            for j in range(per_class):
                class_dict[c].append(len(images))
                images.append(None)
        order = [c for c in classes]
        for c in order:
            for j, idx in enumerate(class_dict[c]):
                images[idx] = _pixels(k)
                k += 1
        data = {"image_data": np.stack(images), "class_dict": class_dict}
        (folder / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps(data, protocol=protocol))


@pytest.fixture
def mini_counts(monkeypatch):
    monkeypatch.setattr(miniimagenet, "IMAGES_PER_CLASS", 2)


def test_mini_imagenet_images_layout(tmp_path, mini_counts):
    _mini_images_layout(tmp_path / "mini")
    data = load_dataset("mini-imagenet", path=str(tmp_path / "mini"), image_size=SIZE)
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert data.num_classes == 100 and len(data.images) == 200 and data.images.dtype == torch.uint8
    assert data.image_shape == (3, SIZE, SIZE)
    assert data.class_names[:2] == _mini_classes()["train"][:2]
    # image k of the fixture is the k-th image of the dataset, exactly (lossless PNG, no resize)
    assert torch.equal(data.images[5], torch.from_numpy(_pixels(5).transpose(2, 0, 1).copy()))
    assert torch.equal(data.class_images(99)[1], torch.from_numpy(_pixels(199).transpose(2, 0, 1).copy()))
    # the cache is a safetensors file of the images, read back memory-mapped
    (cache_file,) = (tmp_path / "cache").glob("mini-imagenet-*.safetensors")
    assert torch.equal(load_tensors(cache_file)["images"], data.images)
    again = load_dataset("mini-imagenet", path=str(tmp_path / "mini"), image_size=SIZE)
    assert torch.equal(again.images, data.images)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_mini_imagenet_pickle_layout_matches_images_layout(tmp_path, mini_counts, protocol):
    _mini_images_layout(tmp_path / "a")
    _mini_pickle_layout(tmp_path / "b", protocol=protocol)
    a = load_dataset("mini-imagenet", path=str(tmp_path / "a"), image_size=SIZE)
    b = load_dataset("mini-imagenet", path=str(tmp_path / "b"), image_size=SIZE)
    assert a.class_names == b.class_names and a.splits == b.splits
    assert torch.equal(a.images, b.images)
    assert b.info["layout"] == "pickle" and a.info["layout"] == "images"
    resized = load_dataset("mini-imagenet", path=str(tmp_path / "b"), image_size=4)
    assert resized.image_shape == (3, 4, 4)


def test_mini_imagenet_mixed_layouts_refused(tmp_path, mini_counts):
    _mini_images_layout(tmp_path / "m")
    _mini_pickle_layout(tmp_path / "p")
    shutil.copy(tmp_path / "p" / "mini-imagenet-cache-val.pkl", tmp_path / "m")
    (tmp_path / "m" / "val.csv").unlink()
    with pytest.raises(DataError, match=r"mixes two layouts .*layout=images or layout=pickle.*looked in .*--path"):
        load_dataset("mini-imagenet", path=str(tmp_path / "m"))
    with pytest.raises(DataError, match="the images layout lacks val.csv"):
        load_dataset("mini-imagenet", path=str(tmp_path / "m"), layout="images")


def test_mini_imagenet_wrong_counts_and_missing_files(tmp_path, mini_counts, monkeypatch):
    _mini_images_layout(tmp_path / "m")
    (tmp_path / "m" / "images" / f"{_mini_classes()['test'][3]}00000001.jpg").unlink()
    with pytest.raises(DataError, match=r"1 images named in the CSVs are not in images/"):
        load_dataset("mini-imagenet", path=str(tmp_path / "m"))
    monkeypatch.setattr(miniimagenet, "IMAGES_PER_CLASS", 3)
    with pytest.raises(DataError, match=r"train.csv lists 2 images of class n\d+, not 3"):
        load_dataset("mini-imagenet", path=str(tmp_path / "m"))


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"mini-imagenet: no such folder.*looked in .*mini-imagenet, from FEWSHOT_DATA"):
        load_dataset("mini-imagenet")


def test_truncated_pickle(tmp_path, mini_counts):
    _mini_pickle_layout(tmp_path / "p")
    pkl = tmp_path / "p" / "mini-imagenet-cache-train.pkl"
    pkl.write_bytes(pkl.read_bytes()[:-500])
    with pytest.raises(DataError, match=r"mini-imagenet-cache-train.pkl: .*truncated"):
        load_dataset("mini-imagenet", path=str(tmp_path / "p"))


def test_malicious_pickle_is_refused_without_running(tmp_path, mini_counts):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    _mini_pickle_layout(tmp_path / "p")
    for protocol in range(2, 6):
        (tmp_path / "p" / "mini-imagenet-cache-val.pkl").write_bytes(
            pickle.dumps({"image_data": Exploit(), "class_dict": {}}, protocol=protocol))
        with pytest.raises(DataError, match=r"refers to (posix|os)\.system, which a dataset pickle never names") as e:
            load_dataset("mini-imagenet", path=str(tmp_path / "p"))
        assert "\n" not in str(e.value)
    assert not marker.exists()


# -- the restricted pickle reader -------------------------------------------------------------

def test_safepickle_bounds_and_refusals():
    # a memo index of 2**31 costs nothing (the C unpickler would ask for 16 GB)
    assert safepickle.loads(b"\x80\x02N" + b"r" + (2 ** 31).to_bytes(4, "little") + b".") is None
    # a length claimed beyond the end is refused before anything is allocated
    for op in (b"\x8e", b"\x96"):
        with pytest.raises(DataError, match="ends before the 1,000,000,000,000 bytes"):
            safepickle.loads(b"\x80\x05" + op + (10 ** 12).to_bytes(8, "little") + b"x.")
    with pytest.raises(DataError, match="array dtype 'O8'"):
        safepickle.loads(pickle.dumps(np.array([None, 1], dtype=object), protocol=2))
    with pytest.raises(DataError, match="opcode"):  # PERSID-style and object opcodes are not in the subset
        safepickle.loads(b"\x80\x02P1\n.")
    with pytest.raises(DataError, match=r"refers to builtins\.eval"):
        safepickle.loads(b"cbuiltins\neval\n(X\x01\x00\x00\x001tR.")
    nested = pickle.dumps(eval("[" * 80 + "]" * 80), protocol=2)
    with pytest.raises(DataError, match="nests containers more than"):
        safepickle.loads(nested)
    value = {"a": [1, -2, 2 ** 70, 1.5, None, True, b"xy", "é", np.int64(-7), np.float32(0.5)], "t": (1, 2),
             "arr": np.arange(6, dtype=">i4").reshape(2, 3)}
    for protocol in range(2, 6):
        out = safepickle.loads(pickle.dumps(value, protocol=protocol))
        assert out["a"] == value["a"] and out["t"] == value["t"] and np.array_equal(out["arr"], value["arr"])


# -- split files ------------------------------------------------------------------------------

def test_real_split_files_and_provenance():
    mini = miniimagenet.split_classes()
    assert [len(mini[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    classes, category = tieredimagenet.split_classes()
    assert [len(classes[s]) for s in ("train", "val", "test")] == [351, 97, 160]
    assert [len({category[c] for c in classes[s]}) for s in ("train", "val", "test")] == [20, 6, 8]
    assert set(tieredimagenet.words()) >= set(category) | set(category.values())
    chen = cub.split_classes("chen2019")
    assert [len(chen[s]) for s in ("train", "val", "test")] == [100, 50, 50]
    assert chen["train"][0] == "001.Black_footed_Albatross" and chen["val"][0] == "002.Laysan_Albatross"
    provenance = (benchmarks.SPLITS_DIR / "PROVENANCE").read_text()
    for name, digest in benchmarks.SPLIT_SHA256.items():
        assert f"{digest}  {name}" in provenance
    assert sorted(p.name for p in benchmarks.SPLITS_DIR.iterdir() if p.name != "PROVENANCE") == sorted(benchmarks.SPLIT_SHA256)
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"fewshot.data" = ["splits/*"]' in pyproject


def test_wrong_split_checksum(tmp_path, monkeypatch, mini_counts):
    _mini_images_layout(tmp_path / "m", per_class=2)
    altered = tmp_path / "splits"
    shutil.copytree(benchmarks.SPLITS_DIR, altered)
    path = altered / "mini-imagenet-val.txt"
    path.write_text(path.read_text().replace("n0", "n9", 1))
    monkeypatch.setattr(benchmarks, "SPLITS_DIR", altered)
    with pytest.raises(DataError, match=r"split file .*mini-imagenet-val.txt has SHA-256 .* it was altered"):
        load_dataset("mini-imagenet", path=str(tmp_path / "m"))


# -- tiered-ImageNet --------------------------------------------------------------------------

@pytest.fixture
def tiered_counts(monkeypatch):
    classes, _ = tieredimagenet.split_classes()
    monkeypatch.setattr(tieredimagenet, "PICKLE_IMAGES", {s: len(c) for s, c in classes.items()})
    monkeypatch.setattr(tieredimagenet, "MIN_FOLDER_IMAGES", 1)


def _tiered_pickle_layout(folder: Path, npz: bool = False) -> None:
    folder.mkdir(parents=True)
    classes, category = tieredimagenet.split_classes()
    words = tieredimagenet.words()
    k = 0
    for split in ("train", "val", "test"):
        synsets = classes[split][::-1]  # the pickles' own class order differs from the split lists'
        cats = sorted({category[s] for s in synsets})
        labels = {"label_specific": np.arange(len(synsets), dtype=np.int32),
                  "label_general": np.array([cats.index(category[s]) for s in synsets], dtype=np.int32),
                  "label_specific_str": [words[s] for s in synsets],
                  "label_general_str": {i: words[c] for i, c in enumerate(cats)}}
        (folder / f"{split}_labels.pkl").write_bytes(pickle.dumps(labels, protocol=2))
        if npz:  # the decoded arrays, in OpenCV's BGR order
            np.savez(folder / f"{split}_images.npz",
                     images=np.stack([_pixels(k + i)[:, :, ::-1] for i in range(len(synsets))]))
        else:
            pngs = [np.frombuffer(_png(k + i), dtype=np.uint8).reshape(-1, 1) for i in range(len(synsets))]
            (folder / f"{split}_images_png.pkl").write_bytes(pickle.dumps(pngs, protocol=2))
        k += len(synsets)


@pytest.mark.parametrize("npz", [False, True])
def test_tiered_imagenet_pickle_layout(tmp_path, tiered_counts, npz):
    _tiered_pickle_layout(tmp_path / "t", npz=npz)
    data = load_dataset("tiered-imagenet", path=str(tmp_path / "t"), image_size=SIZE)
    classes, category = tieredimagenet.split_classes()
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [351, 97, 160]
    assert data.class_names[:351] == classes["train"]
    assert data.class_groups == [category[c] for c in data.class_names] and len(set(data.class_groups)) == 34
    # the pickle held train classes in reverse order: the first listed class is its last image
    assert torch.equal(data.images[0], torch.from_numpy(_pixels(350).transpose(2, 0, 1).copy()))
    assert torch.equal(data.images[607], torch.from_numpy(_pixels(351 + 97).transpose(2, 0, 1).copy()))


def test_tiered_imagenet_compressed_npz_refused(tmp_path, tiered_counts):
    _tiered_pickle_layout(tmp_path / "t", npz=True)
    path = tmp_path / "t" / "val_images.npz"
    images = np.load(path)["images"]
    np.savez_compressed(path, images=images)
    with pytest.raises(DataError, match="val_images.npz is compressed; .* re-save it with np.savez"):
        load_dataset("tiered-imagenet", path=str(tmp_path / "t"))


def test_tiered_imagenet_wrong_category_grouping(tmp_path, tiered_counts):
    _tiered_pickle_layout(tmp_path / "t")
    path = tmp_path / "t" / "val_labels.pkl"
    labels = pickle.loads(path.read_bytes())
    labels["label_general"] = np.zeros_like(labels["label_general"])
    path.write_bytes(pickle.dumps(labels, protocol=2))
    with pytest.raises(DataError, match="val_labels.pkl groups the classes into categories other than"):
        load_dataset("tiered-imagenet", path=str(tmp_path / "t"))


def test_tiered_imagenet_folder_layout_and_missing_class_folder(tmp_path, tiered_counts):
    classes, _ = tieredimagenet.split_classes()
    order = [c for s in ("train", "val", "test") for c in classes[s]]
    root = tmp_path / "imagenet" / "train"
    for k, synset in enumerate(order):
        (root / synset).mkdir(parents=True)
        (root / synset / f"{synset}_1.JPEG").write_bytes(_png(k))
    data = load_dataset("tiered-imagenet", path=str(root), image_size=SIZE)
    assert data.info["layout"] == "folder" and len(data.images) == 608
    assert torch.equal(data.images[607], torch.from_numpy(_pixels(607).transpose(2, 0, 1).copy()))
    shutil.rmtree(root / classes["val"][5])
    with pytest.raises(DataError, match=rf"class folder {classes['val'][5]}/ is missing.*looked in .*--path"):
        load_dataset("tiered-imagenet", path=str(root))


# -- CUB-200-2011 -----------------------------------------------------------------------------

def _cub_layout(folder: Path) -> list[str]:
    folder.mkdir(parents=True)
    names = sorted(c for cs in cub.split_classes("chen2019").values() for c in cs)
    lines = {"images.txt": [], "image_class_labels.txt": [], "classes.txt": [], "bounding_boxes.txt": []}
    for i, name in enumerate(names, 1):
        lines["classes.txt"].append(f"{i} {name}")
        (folder / "images" / name).mkdir(parents=True)
        image = np.zeros((16, 16, 3), dtype=np.uint8)
        image[4:12, 4:12] = _pixels(i)[0, 0]  # the box holds a flat colour
        Image.fromarray(image).save(folder / "images" / name / f"{name}_1.jpg", "PNG")
        lines["images.txt"].append(f"{i} {name}/{name}_1.jpg")
        lines["image_class_labels.txt"].append(f"{i} {i}")
        lines["bounding_boxes.txt"].append(f"{i} 4.0 4.0 8.0 8.0")
    for file, rows in lines.items():
        (folder / file).write_text("\n".join(rows) + "\n")
    return names


def test_cub_layout_split_and_bounding_boxes(tmp_path, monkeypatch):
    monkeypatch.setattr(cub, "IMAGES", 200)
    names = _cub_layout(tmp_path / "cub" / "CUB_200_2011")
    monkeypatch.setenv("FEWSHOT_DATA", str(tmp_path))
    data = load_dataset("cub", image_size=SIZE, bounding_boxes=True)
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [100, 50, 50]
    assert data.class_names[0] == names[0] and data.class_names[100] == names[1] and data.class_names[150] == names[3]
    # cropped to the box: the whole image is the box's flat colour
    assert torch.equal(data.images[0], torch.from_numpy(_pixels(1).transpose(2, 0, 1).copy()))
    whole = load_dataset("cub", image_size=SIZE)
    assert int(whole.images[0, :, 0, 0].sum()) == 0  # uncropped: the black border stays
    (tmp_path / "cub" / "CUB_200_2011" / "images.txt").unlink()
    with pytest.raises(DataError, match=r"cub: lacks images.txt.*looked in .*CUB_200_2011, from FEWSHOT_DATA"):
        load_dataset("cub")


def test_cub_missing_class_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(cub, "IMAGES", 200)
    names = _cub_layout(tmp_path / "c")
    shutil.rmtree(tmp_path / "c" / "images" / names[7])
    with pytest.raises(DataError, match=rf"class folder images/{names[7]}/ is missing"):
        load_dataset("cub", path=str(tmp_path / "c"))


# -- the CLI ----------------------------------------------------------------------------------

def test_cli_data_list_and_info(tmp_path, mini_counts, capsys):
    from fewshot.cli import main

    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"\n{n} " in "\n" + listed for n in ("mini-imagenet", "cub")) and "tiered-imagenet" in listed
    _mini_images_layout(tmp_path / "m")
    assert main(["data", "info", "mini-imagenet", "--path", str(tmp_path / "m"), "--image-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "mini-imagenet: images 3x8x8" in out and "train" in out and "64" in out
    assert main(["data", "info", "mini-imagenet", "--path", str(tmp_path / "nowhere")]) == 2


def test_benchmark_configs_are_valid_and_name_these_datasets():
    from fewshot.config import TrainConfig
    from fewshot.data import DATASETS

    files = sorted((Path(__file__).parents[1] / "configs" / "benchmarks").glob("*.json"))
    assert len(files) >= 10
    for path in files:
        config = TrainConfig.layered(path)
        assert config.dataset in ("mini-imagenet", "tiered-imagenet", "cub") and config.dataset in DATASETS, path.name
        assert config.dataset_options == {"image_size": 84} and config.val_split == "val", path.name
        assert config.backbone in ("conv4", "resnet12") and config.way == 5, path.name


def test_benchmark_config_trains_on_the_layout(tmp_path, monkeypatch, capsys):
    config = "protonet-mini-imagenet-conv4-5w1s"
    from fewshot.cli import main

    monkeypatch.setattr(miniimagenet, "IMAGES_PER_CLASS", 3)
    _mini_images_layout(tmp_path / "m", per_class=3)
    path = Path(__file__).parents[1] / "configs" / "benchmarks" / f"{config}.json"
    args = ["train", "--config", str(path), "--path", str(tmp_path / "m"), "--image-size", "8", "--episodes", "2",
            "--train-way", "5", "--train-query", "2", "--query", "2", "--val-split", "none", "--quiet",
            "--out", str(tmp_path / "run"), "--runs", str(tmp_path)]
    assert main(args) == 0, capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "run"), "--episodes", "2", "--quiet", "--json", "--runs", str(tmp_path)]) == 0
    assert '"accuracy"' in capsys.readouterr().out
