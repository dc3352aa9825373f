"""Your own task: fewshot.load -> fit -> predict / predict_proba -> save, on tiny runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fewshot
from fewshot import ConfigError, DataError, TrainConfig, Trainer
from fewshot.calibration import fit_temperature
from fewshot.data import from_arrays, load_dataset

TINY = dict(dataset="digits", backbone_options={"width": 8}, way=5, shot=1, query=5, episodes=6, val_every=3,
            val_episodes=4, checkpoint_every=3)


def train(tmp_path, name, **settings):
    config = TrainConfig(**{**TINY, **settings})
    run = tmp_path / name
    Trainer(config, run).run(progress=False, record=False)
    return run


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def proto_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("proto"), "proto", method="protonet")


def task(digits, per_class=3, offset=0, classes=range(5, 10)):
    """Images (n, 8, 8) uint8 and string labels of the test digits."""
    idx = [int(digits.class_offsets[c]) + offset + i for c in classes for i in range(per_class)]
    return digits.images[idx, 0].numpy(), [f"digit {int(digits.labels[i])}" for i in idx]


def test_string_labels_arrays_and_files(proto_run, digits, tmp_path):
    sx, sy = task(digits)
    learner = fewshot.load(proto_run)
    assert learner.fit(sx, sy) is learner  # scikit-learn's convention
    assert list(learner.classes_) == [f"digit {d}" for d in range(5, 10)]
    qx, qy = task(digits, per_class=8, offset=10)
    predicted = learner.predict(qx)
    assert set(predicted) <= set(sy) and len(predicted) == len(qx)
    proba = learner.predict_proba(qx)
    assert proba.shape == (40, 5) and np.allclose(proba.sum(1), 1)
    assert (learner.classes_[proba.argmax(1)] == predicted).all()
    assert learner.score(qx, qy) > 0.4  # far above chance (0.2) even for a 6-step model
    # The same images as PNG files (upscaled: resized back to 8x8 on reading) and as PIL images.
    files = []
    for i, image in enumerate(sx):
        path = tmp_path / f"s{i}.png"
        Image.fromarray(image).save(path)
        files.append(str(path))
    by_file = fewshot.load(proto_run).fit(files, sy)
    assert (by_file.predict(qx) == predicted).all()
    pil = [Image.fromarray(image).resize((32, 32)).convert("RGB") for image in qx]
    assert (by_file.predict(pil) == predicted).mean() > 0.8  # resized twice: a few may change
    # Layouts: (n, h, w), (n, 1, h, w), (n, h, w, 1), torch, float in [0, 1], a list of 2-D arrays.
    for x in (qx[:, None], qx[:, :, :, None], torch.from_numpy(qx), qx.astype(np.float32) / 255, list(qx)):
        assert (learner.predict(x) == predicted).all()


def test_integer_labels_any_values(proto_run, digits):
    sx, _ = task(digits)
    labels = [5, 5, 5, 6, 6, 6, 7, 7, 7, 800, 800, 800, 9, 9, 9]  # not 0..way-1: any hashable label
    learner = fewshot.load(proto_run).fit(sx, labels)
    assert list(learner.classes_) == [5, 6, 7, 9, 800]
    assert set(learner.predict(sx).tolist()) <= {5, 6, 7, 9, 800}


@pytest.mark.parametrize("bad, match", [
    (lambda sx: sx.astype(np.float32), "float values must lie in \\[0, 1\\].*uint8"),  # 0-255 floats
    (lambda sx: sx[:, None].repeat(2, 1), "channels"),
    (lambda sx: sx[0], "a single image goes in a list"),
    (lambda sx: "one.png", "not one path"),
    (lambda sx: ["missing.png"] * len(sx), "does not exist"),
    (lambda sx: np.array([object()] * len(sx)), "expected numbers"),
    (lambda sx: sx.astype(np.int64) * 100, "0-255"),
    (lambda sx: {"x": sx}, "expected a list"),
])
def test_wrong_images_are_data_errors(proto_run, digits, bad, match):
    sx, sy = task(digits)
    with pytest.raises(DataError, match=match):
        fewshot.load(proto_run).fit(bad(sx), sy)


def test_wrong_labels_and_order(proto_run, digits):
    sx, sy = task(digits)
    learner = fewshot.load(proto_run)
    with pytest.raises(ConfigError, match="fit"):
        learner.predict(sx)
    with pytest.raises(DataError, match="one label per image"):
        learner.fit(sx, sy[:-1])
    with pytest.raises(DataError, match="at least 2 classes"):
        learner.fit(sx, ["a"] * len(sx))
    with pytest.raises(DataError, match="hashable"):
        learner.fit(sx, [[1]] * len(sx))
    with pytest.raises(DataError, match="sequence"):
        learner.fit(sx, "abc")


def test_probabilities_are_calibrated_not_saturated(proto_run, digits):
    state = json.loads((proto_run / "state.json").read_text())
    calibration = state["calibration"]
    assert calibration["temperature"] > 0 and calibration["nll_after"] <= calibration["nll_before"] + 1e-9
    sx, sy = task(digits)
    qx, _ = task(digits, per_class=8, offset=10)
    proba = fewshot.load(proto_run).fit(sx, sy).predict_proba(qx)
    assert 0.2 < proba.max(1).mean() < 0.999  # not the saturated 1.0 / 0.0 of raw distances
    # Temperature scaling recovers a known temperature.
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (4000,))
    logits = torch.randn(4000, 5) + 2 * nn.functional.one_hot(labels, 5)
    sampled = torch.distributions.Categorical(logits=logits).sample()
    assert fit_temperature(logits * 3, sampled) == pytest.approx(3, rel=0.1)


def test_export_loads_in_a_fresh_process_without_the_run(proto_run, digits, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(proto_run, run)
    sx, sy = task(digits)
    qx, _ = task(digits, per_class=4, offset=10)
    learner = fewshot.load(run).fit(sx, sy)
    expected = learner.predict_proba(qx)
    for out in (tmp_path / "model.safetensors", tmp_path / "model"):
        learner.save(out)
    shutil.rmtree(run)
    np.save(tmp_path / "sx.npy", sx)
    np.save(tmp_path / "qx.npy", qx)
    script = (f"import fewshot, numpy as np, json; sx = np.load({str(tmp_path / 'sx.npy')!r}); "
              f"qx = np.load({str(tmp_path / 'qx.npy')!r}); out = {{}}\n"
              f"for m in ('model.safetensors', 'model'):\n"
              f"    out[m] = fewshot.load({str(tmp_path)!r} + '/' + m).fit(sx, {sy!r}).predict_proba(qx).tolist()\n"
              f"print(json.dumps(out))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for probabilities in json.loads(result.stdout).values():
        assert np.allclose(probabilities, expected, atol=1e-6)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["format"] == "fewshot-model"


def test_not_a_model(tmp_path):
    from fewshot.errors import CheckpointError

    (tmp_path / "x.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        fewshot.load(tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match="neither a run folder"):
        fewshot.load(tmp_path)


def test_maml_predicts_in_train_mode_without_changing_the_model(tmp_path, digits):
    run = train(tmp_path, "maml", method="maml", method_options={"inner_steps": 1}, episodes=2, val_every=2,
                checkpoint_every=2)
    learner = fewshot.load(run, calibration_episodes=0)
    before = {k: v.clone() for k, v in learner.method.state_dict().items()}
    sx, sy = task(digits)
    proba = learner.fit(sx, sy).predict_proba(task(digits, offset=10)[0])
    assert proba.shape == (15, 5)
    assert all(torch.equal(before[k], v) for k, v in learner.method.state_dict().items())  # BN stats untouched
    assert learner.calibration["fitted"] is True  # by the trainer, on MAML's own (train-mode) predictions


def test_transfer_strategy(proto_run, digits):
    learner = fewshot.load(proto_run, strategy="linear-probe", calibration_episodes=3)
    assert learner.calibration["strategy"]["name"] == "linear-probe" and learner.calibration["episodes"] == 3
    sx, sy = task(digits)
    qx, qy = task(digits, per_class=6, offset=10)
    assert learner.fit(sx, sy).score(qx, qy) > 0.4
    assert learner.method.training is False or learner.method.test_mode == "train"


# -- the trainer takes what users have -------------------------------------------------------

class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("method", ["protonet", "maml"])
def test_user_module_trains_through_trainer(tmp_path, digits, method):
    config = TrainConfig(**{**TINY, "method": method, "episodes": 2, "val_every": 2, "checkpoint_every": 2})
    run = tmp_path / method
    Trainer(config, run, backbone=UserNet()).run(progress=False, record=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["backbone"] == "custom" and saved["backbone_options"]["class"].endswith("UserNet")
    with pytest.raises(ConfigError, match="your own backbone"):
        fewshot.load(run)
    sx, sy = task(digits)
    assert len(fewshot.load(run, backbone=UserNet(), calibration_episodes=0).fit(sx, sy).predict(sx)) == 15


def test_user_module_returning_maps_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="nn.Flatten"):
        Trainer(TrainConfig(**TINY), tmp_path / "r", backbone=nn.Conv2d(1, 4, 3))


def test_from_arrays_recorded_honestly_and_not_evaluated_by_name(tmp_path, digits):
    x, y = digits.images.numpy()[:, 0], [f"class-{int(c)}" for c in digits.labels]
    data = from_arrays(x, y, splits={"train": [f"class-{c}" for c in range(5)],
                                     "test": [f"class-{c}" for c in range(5, 10)]})
    run = tmp_path / "arrays"
    Trainer(TrainConfig(**TINY), run, dataset=data).run(progress=False, record=False)
    config = json.loads((run / "config.json").read_text())
    state = json.loads((run / "state.json").read_text())
    assert config["dataset"] == "memory:arrays" and state["data"]["in_memory"] is True
    result = subprocess.run([sys.executable, "-m", "fewshot", "evaluate", str(run), "--episodes", "5",
                             "--runs", str(tmp_path / "store")], capture_output=True, text=True)
    assert result.returncode == 2 and "in-memory dataset" in result.stderr and "Traceback" not in result.stderr
    # A dataset loaded by name is recorded by that name and its options, whatever the config said.
    rotated = load_dataset("digits", rotations=True)
    run2 = tmp_path / "rot"
    Trainer(TrainConfig(**{**TINY, "dataset": "mnist"}), run2, dataset=rotated).run(progress=False, record=False)
    assert json.loads((run2 / "config.json").read_text())["dataset_options"] == {"rotations": True}


def test_from_arrays_splits_by_label(digits):
    x, y = digits.images.numpy()[:, 0], digits.labels.numpy() + 5  # labels 5..14
    data = from_arrays(x, y, splits={"train": [5, 6, 7], "test": [12, 13, 14]})
    assert data.split_classes("train") == [0, 1, 2] and data.split_classes("test") == [7, 8, 9]
    with pytest.raises(DataError, match="neither a label"):
        from_arrays(x, y, splits={"train": [99]})


def test_defaults_work_on_8x8_digits(tmp_path):
    """The default backbone (Conv-4) on 8x8 digits: its depth follows the image size."""
    config = TrainConfig.for_dataset("digits", episodes=2, val_every=2, val_episodes=2, checkpoint_every=2,
                                     train_way=5, backbone_options={"width": 8})
    assert config.val_split == "val" and config.dataset_options == {"rotations": True}
    run = tmp_path / "d"
    result = Trainer(config, run).run(progress=False, record=False)
    assert result.best_accuracy is not None  # validated on digits' val split


# -- the command line ------------------------------------------------------------------------

def image_tree(root, digits, classes, per_class, offset=0):
    for c in classes:
        (root / f"digit-{c}").mkdir(parents=True)
        for i in range(per_class):
            image = digits.images[int(digits.class_offsets[c]) + offset + i, 0].numpy()
            Image.fromarray(image).save(root / f"digit-{c}" / f"{i}.png")
    return root


def fewshot_cli(*argv):
    return subprocess.run([sys.executable, "-m", "fewshot", *map(str, argv)], capture_output=True, text=True,
                          timeout=300)


def test_predict_and_export_commands(proto_run, digits, tmp_path):
    support = image_tree(tmp_path / "support", digits, range(5, 10), 3)
    query = image_tree(tmp_path / "query", digits, range(5, 8), 2, offset=20)
    text = fewshot_cli("predict", proto_run, "--support", support, "--queries", query)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.strip().splitlines()
    assert len(lines) == 6 and all(line.split()[1].startswith("digit-") for line in lines)
    as_json = fewshot_cli("predict", proto_run, "--support", support, "--queries", query / "digit-5" / "0.png",
                          query / "digit-6", "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert len(rows) == 3 and {"path", "label", "probability"} <= set(rows[0])
    assert rows[0]["label"] == lines[0].split()[1] and 0 < rows[0]["probability"] <= 1
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-4
    out = tmp_path / "digits.safetensors"
    exported = fewshot_cli("export", proto_run, "--out", out)
    assert exported.returncode == 0 and out.is_file(), exported.stderr
    again = fewshot_cli("predict", out, "--support", support, "--queries", query)
    assert again.stdout == text.stdout
    bad = fewshot_cli("predict", proto_run, "--support", tmp_path / "nowhere", "--queries", query)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


# -- a run's backbone with a feature head; a fitted model saved ------------------------------------

def test_run_backbone_with_a_head_and_fitted_save(proto_run, digits, tmp_path):
    sx, sy = task(digits)
    qx, qy = task(digits, per_class=8, offset=10)
    learner = fewshot.load(proto_run, head="simpleshot")
    assert learner.fit(sx, sy).score(qx, qy) > 0.4
    assert learner.support_.ndim == 2  # features of the run's backbone
    expected = learner.predict_proba(qx)
    learner.save(tmp_path / "head.safetensors")
    back = fewshot.load(tmp_path / "head.safetensors")  # the saved head and support features
    assert back.description_name.endswith("head simpleshot")
    assert np.allclose(back.predict_proba(qx), expected, atol=1e-6)
    # The run's own method, fitted and saved: the prepared support images come back with it.
    own = fewshot.load(proto_run).fit(sx, sy)
    own.save(tmp_path / "own")
    again = fewshot.load(tmp_path / "own")
    assert list(again.classes_) == list(own.classes_)
    assert np.allclose(again.predict_proba(qx), own.predict_proba(qx), atol=1e-6)
    # A head fits on features, not on the saved prepared images: that learner must be fitted again.
    with pytest.raises(fewshot.NotFittedError, match="not fitted"):
        fewshot.load(tmp_path / "own", head="logistic").predict(qx)
