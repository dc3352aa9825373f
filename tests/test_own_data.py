"""Your own data: folders and CSVs as real datasets (splits, inferred size and channels), and
default settings that train on digits, MNIST-format files and folders."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fewshot import ConfigError, TrainConfig, Trainer
from fewshot.data import load_dataset
from fewshot.data.folder import load_folder


def grey_folder(root, classes=6, per_class=4, size=(28, 28)):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


def test_size_and_channels_inferred_and_recorded(tmp_root, tmp_path):
    data = load_folder(tmp_root, path=grey_folder(tmp_path / "g"))
    assert data.image_shape == (1, 28, 28)  # 28x28 grey PNGs stay 28x28 grey (not 84x84 RGB)
    assert data.info["inferred"] == {"channels": 1, "image_size": 28}
    rgb = tmp_path / "big"
    for c in ("a", "b"):
        (rgb / c).mkdir(parents=True)
        Image.new("RGB", (300, 200), (9, 9, 9)).save(rgb / c / "x.jpg")
    assert load_folder(tmp_root, path=rgb).image_shape == (3, 84, 84)  # large photos: capped at 84
    assert load_folder(tmp_root, path=rgb, channels=1, image_size=16).image_shape == (1, 16, 16)


def test_class_splits_seeded_named_and_recorded(tmp_root, tmp_path):
    path = grey_folder(tmp_path / "g", classes=10)
    data = load_folder(tmp_root, path=path)
    assert {s: len(c) for s, c in data.splits.items()} == {"train": 6, "val": 2, "test": 2}
    assert sorted(sum(data.splits.values(), [])) == list(range(10))  # a partition of the classes
    assert load_folder(tmp_root, path=path).splits == data.splits  # seeded
    assert load_folder(tmp_root, path=path, split_seed=1).splits != data.splits
    assert data.info["split_classes"]["test"] == [data.class_names[c] for c in data.splits["test"]]
    named = load_folder(tmp_root, path=path, test_classes="c8,c9", val_classes=["c7"])
    assert named.splits == {"train": list(range(7)), "val": [7], "test": [8, 9]}
    with pytest.raises(ConfigError, match="c42, not classes"):
        load_folder(tmp_root, path=path, test_classes="c42")
    with pytest.raises(ConfigError, match="both"):
        load_folder(tmp_root, path=path, train_classes="c1,c2", test_classes="c2")
    with pytest.raises(ConfigError, match="no classes to train on"):
        load_folder(tmp_root, path=path, val_ratio=0.5, test_ratio=0.5)


def test_csv_of_path_label(tmp_root, tmp_path):
    path = grey_folder(tmp_path / "g", classes=3, per_class=2)
    rows = ["path,label"] + [f"g/c{c}/{i}.png,class {c}" for c in range(3) for i in range(2)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset("folder", tmp_root, path=str(tmp_path / "labels.csv"), test_ratio=0.0, val_ratio=0.0)
    assert data.class_names == ["class 0", "class 1", "class 2"] and data.class_counts.tolist() == [2, 2, 2]
    assert np.array_equal(data.images.numpy(), load_folder(tmp_root, path=path, val_ratio=0.0, test_ratio=0.0)
                          .images.numpy())
    (tmp_path / "bad.csv").write_text("g/c0/0.png\n")
    with pytest.raises(Exception, match="expected path,label"):
        load_folder(tmp_root, path=tmp_path / "bad.csv")


def test_data_info_folder_cli(tmp_path):
    path = grey_folder(tmp_path / "g", classes=5)
    result = subprocess.run([sys.executable, "-m", "fewshot", "data", "info", "folder", "--path", str(path),
                             "--data-root", str(tmp_path / "root")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "1x28x28" in result.stdout.replace(" ", "").replace("[1,28,28]", "1x28x28")


def test_defaults_train_on_mnist_files_and_folders(tmp_root, tmp_path):
    from test_data_loaders import write_mnist

    write_mnist(tmp_root / "mnist")
    for dataset, options in (("mnist", {}), ("folder", {"path": str(grey_folder(tmp_path / "g", classes=12))})):
        config = TrainConfig.for_dataset(dataset, dataset_options=options, way=2, shot=1, query=1, episodes=2,
                                         val_every=2, val_episodes=2, checkpoint_every=2,
                                         backbone_options={"width": 8})
        run = tmp_path / f"run-{dataset}"
        Trainer(config, run, data_root=tmp_root).run(progress=False, record=False)
        state = json.loads((run / "state.json").read_text())
        assert state["image_shape"] == [1, 28, 28] and state["data"]["name"] == dataset


def test_demo_tells_the_whole_story(tmp_path, capsys):
    from fewshot.demo import run_demo

    out = tmp_path / "demo"
    result = run_demo("digits", out=out, runs=tmp_path / "store", quick=True, test_episodes=2)
    printed = capsys.readouterr().out
    for step in ("[1] meta-training", "[2] your task", "[3]", "[4] done", "LP-FT", "raw pixels", "predicted"):
        assert step in printed
    assert (out / "model.safetensors").is_file() and (out / "report" / "index.html").is_file()
    assert set(result["accuracy"][1]) == {"pixel-ncm", "protonet", "maml", "protonet+lp-ft"}
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="not made by the demo"):
        run_demo("digits", out=tmp_path / "mine", quick=True)
