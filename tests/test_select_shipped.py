"""The meta-learner shipped with fewshot: trees stored as data predict exactly as the fitted
ones, the shipped file is checked before use and names the committed meta-dataset, and
``fewshot select`` ranks a zoo holding a Hugging Face folder with it, building nothing."""

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from fewshot.cli import main
from fewshot.errors import CheckpointError
from fewshot.select import shipped as shipped_module
from fewshot.select.index import Zoo
from fewshot.select.metafeatures import describe_candidates
from fewshot.select.metalearner import MetaLearner
from fewshot.select.selection import load_task_folder
from fewshot.select.shipped import (CATALOGUE, load_shipped, portable_columns, save_shipped,
                                    train_shipped)
from fewshot.select.trees import Trees, export_trees

ROOT = Path(__file__).resolve().parent.parent


def table(seed=0, tasks=24, models=("a", "b", "c", "d")):
    """A small meta-dataset: model b is best where task.x is high, c where it is low; some NaN scores."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(tasks):
        x = rng.uniform()
        for j, m in enumerate(models):
            acc = 50 + 30 * (x if m == "b" else 1 - x if m == "c" else 0.3) + rng.normal(0, 2)
            rows.append({"task": f"t{t}", "group": f"g{t % 4}", "model": m, "task.x": x, "model.size": float(j),
                         "model.arch.conv4": float(j % 2), "score.s": acc + rng.normal(0, 5) if j else None,
                         "accuracy": acc})
    return rows


def test_trees_predict_bit_for_bit_as_scikit_learn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    x[rng.uniform(size=x.shape) < 0.1] = np.nan  # missing values take the side each split learned
    y = np.nan_to_num(x[:, 0]) * 2 + np.nan_to_num(x[:, 1]) ** 2 + rng.normal(size=300)
    new = rng.normal(size=(200, 5))
    new[rng.uniform(size=new.shape) < 0.2] = np.nan
    regressor = HistGradientBoostingRegressor(max_iter=30, random_state=0).fit(x, y)
    kind, arrays = export_trees(regressor)
    assert np.array_equal(Trees(kind, arrays, 5).predict(new), regressor.predict(new))
    classifier = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(x, y > 1)
    kind, arrays = export_trees(classifier)
    trees = Trees(kind, arrays, 5)
    assert np.array_equal(trees.predict_proba(new), classifier.predict_proba(new))
    assert np.array_equal(trees.predict(new), classifier.predict(new))


def test_a_stored_learner_ranks_and_predicts_as_the_fitted_one(tmp_path):
    rows = table()
    test = [{k: v for k, v in r.items() if k != "accuracy"} for r in table(seed=1)]
    selector = train_shipped({"finetune": rows}, {"file": "synthetic", "sha256": "0" * 64}, model_folds=2)
    assert selector.learners["finetune"].base_columns_ == ["model.size", "score.s", "task.x"]  # no catalogue column
    save_shipped(selector, tmp_path / "s.safetensors")
    loaded = load_shipped(tmp_path / "s.safetensors")
    fitted, stored = selector.learners["finetune"], loaded.learner("finetune")
    assert np.array_equal(fitted.predict(test), stored.predict(test))
    assert np.array_equal(fitted.predict_accuracy(test), stored.predict_accuracy(test))
    assert loaded.intervals == selector.intervals and loaded.intervals["finetune"]["residuals"] == len(rows)
    assert loaded.trained_on["tasks"] == 24 and loaded.trained_on["models"] == ["a", "b", "c", "d"]
    # The learner learned the planted rule: on a task with high task.x, b ranks above c.
    high = [r for r in test if r["task"] == max({r["task"]: r["task.x"] for r in test}.items(), key=lambda t: t[1])[0]]
    score = dict(zip([r["model"] for r in high], stored.predict(high)))
    assert score["b"] > score["c"]
    # Values outside the training ranges are named.
    assert loaded.outside([{**high[0], "model.size": 9.0}], "finetune") == [["model.size"]]
    # Without task columns the task's level is one number, stored as such.
    regression = MetaLearner("regression", features=("model.", "score."), seed=0).fit(rows)
    info, arrays = regression.state()
    assert isinstance(info["level"], float) and not any(name.startswith("level.") for name in arrays)
    assert np.array_equal(MetaLearner.from_state(info, arrays).predict(test), regression.predict(test))


def test_a_damaged_or_foreign_shipped_file_is_refused_in_one_line(tmp_path, monkeypatch):
    selector = train_shipped({"finetune": table()}, {"file": "synthetic", "sha256": "0" * 64}, model_folds=2)
    path = tmp_path / "s.safetensors"
    save_shipped(selector, path)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_shipped(tmp_path / "cut.safetensors")
    (tmp_path / "foreign.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    with pytest.raises(CheckpointError, match="not a shipped meta-learner"):
        load_shipped(tmp_path / "foreign.safetensors")
    # A child index pointing back up its tree (a walk that would never end) is refused.
    size = struct.unpack("<Q", data[:8])[0]
    head = json.loads(data[8:8 + size])
    start, _ = head["finetune/model.left"]["data_offsets"]
    body = bytearray(data)
    body[8 + size + start: 8 + size + start + 4] = struct.pack("<i", 0)
    (tmp_path / "loop.safetensors").write_bytes(bytes(body))
    with pytest.raises(CheckpointError, match="not a later node"):
        load_shipped(tmp_path / "loop.safetensors")
    monkeypatch.setattr(shipped_module, "MAX_BYTES", 1000)
    with pytest.raises(CheckpointError, match="larger than"):
        load_shipped(path)


def test_the_shipped_file_was_trained_on_the_committed_meta_dataset():
    loaded = load_shipped()
    meta = ROOT / loaded.trained_on["file"]
    assert loaded.trained_on["sha256"] == hashlib.sha256(meta.read_bytes()).hexdigest(), (
        "the shipped meta-learner was trained on another meta-dataset: run python benchmarks/ship_selector.py")
    assert set(loaded.learners) == {"finetune", "linear-probe"}
    for learner in loaded.learners.values():
        assert learner.base_columns_ == portable_columns(learner.base_columns_)
        assert not any(c.startswith(CATALOGUE) for c in learner.base_columns_)
        assert any(c.startswith("score.") for c in learner.base_columns_)
    for interval in loaded.intervals.values():
        assert interval["low"] < 0 < interval["high"] and interval["coverage"] == 0.9


def test_select_ranks_a_zoo_with_a_hugging_face_folder_with_the_shipped_learner(tmp_path, capsys, monkeypatch):
    transformers = pytest.importorskip("transformers", reason="the hub extra (transformers) is not installed")
    from sklearn.datasets import load_digits

    from fewshot.models import build_backbone

    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8], depths=[1],
                                       layer_type="basic", architectures=["ResNetForImageClassification"],
                                       id2label={i: str(i) for i in range(5)})
    transformers.ResNetForImageClassification(config).save_pretrained(tmp_path / "hf-resnet")
    zoo = Zoo(tmp_path / "zoo", create=True)
    assert main(["zoo", "add", "resnet", str(tmp_path / "hf-resnet"), "--zoo", str(zoo.root),
                 "--image-shape", "3", "40", "40"]) == 0
    zoo.add("conv", build_backbone("conv4", (1, 28, 28), width=4, depth=2), image_shape=(1, 28, 28),
            metadata={"objective": "random-init"})
    digits = load_digits()
    for c in (3, 8):
        folder = tmp_path / "support" / f"digit{c}"
        folder.mkdir(parents=True)
        for i in range(3):
            image = digits.images[np.flatnonzero(digits.target == c)[i]] * (255 / 16)
            Image.fromarray(image.astype(np.uint8)).save(folder / f"{i}.png")
    capsys.readouterr()

    assert main(["select", "--zoo", str(zoo.root), "--support", str(tmp_path / "support")]) == 0
    text = capsys.readouterr().out
    assert f"ranked by {load_shipped().describe()}" in text
    assert "fewshot select build" in text and "resnet" in text and "conv" in text
    assert not (zoo.root / "meta.sqlite").exists()  # nothing was built

    assert main(["select", "--zoo", str(zoo.root), "--support", str(tmp_path / "support"), "--verify", "1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["meta_learner"]["source"] == "shipped" and out["finetune_all_cpu_seconds_estimate"] is None
    # Verification works as with a built meta-learner: the top model adapted for real, recorded.
    assert 0 <= out["ranking"][0]["measured_accuracy"] <= 100 and out["monitor"]["verifications"] == 1
    assert out["meta_rows"] == load_shipped().trained_on["rows"]
    shipped = load_shipped()
    learner, interval = shipped.learner("finetune"), shipped.intervals["finetune"]
    # Every feature the shipped learner reads is there for the Hugging Face model, its
    # source head's LEEP included; the conv model has no head, so its LEEP is missing.
    x, y, _ = load_task_folder(tmp_path / "support", zoo)
    rows, _ = describe_candidates(zoo, x, y, zoo.names(), task="user-task", group="user")
    resnet = next(r for r in rows if r["model"] == "resnet")
    assert [c for c in learner.base_columns_ if resnet.get(c) is None or not np.isfinite(resnet[c])] == []
    assert "score.leep" in learner.base_columns_ and resnet["model.source_classes"] == 5.0
    assert next(r for r in rows if r["model"] == "conv")["score.leep"] is None
    # The ranking is the shipped learner's, with its interval around each prediction.
    score = dict(zip([r["model"] for r in rows], learner.predict(rows)))
    predicted = dict(zip([r["model"] for r in rows], learner.predict_accuracy(rows)))
    ranking = out["ranking"]
    assert [e["model"] for e in ranking] == sorted(score, key=lambda m: -score[m])
    for e in ranking:
        assert e["predicted_accuracy"] == pytest.approx(predicted[e["model"]])
        assert e["interval"] == pytest.approx([float(np.clip(predicted[e["model"]] - interval["high"], 0, 100)),
                                               float(np.clip(predicted[e["model"]] - interval["low"], 0, 100))])
        assert e["uncertainty"] == interval["rmse"] and e["coverage"] == 0.9
    # The Hugging Face model takes larger images than any of the reference zoo's models: said, not hidden.
    assert "model.image_side" in next(e for e in ranking if e["model"] == "resnet")["outside_training"]


def test_zoo_add_takes_an_hf_name_as_predict_does_and_an_empty_zoo_is_one_line(tmp_path, capsys):
    transformers = pytest.importorskip("transformers", reason="the hub extra (transformers) is not installed")
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8], depths=[1],
                                       layer_type="basic")
    transformers.ResNetModel(config).save_pretrained(tmp_path / "hf-resnet")
    zoo = Zoo(tmp_path / "zoo", create=True)
    (tmp_path / "support" / "a").mkdir(parents=True)
    capsys.readouterr()
    assert main(["select", "--zoo", str(zoo.root), "--support", str(tmp_path / "support")]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(error) == 1 and "holds no model yet; add some with `fewshot zoo add" in error[0]
    # `hf:FOLDER` names the same model as the bare folder, as it does for predict and evaluate.
    assert main(["zoo", "add", "prefixed", f"hf:{tmp_path / 'hf-resnet'}", "--zoo", str(zoo.root)]) == 0
    assert main(["zoo", "add", "bare", str(tmp_path / "hf-resnet"), "--zoo", str(zoo.root)]) == 0
    prefixed, bare = zoo.metadata("prefixed"), zoo.metadata("bare")
    assert prefixed["hub"]["name"] == f"hf:{tmp_path / 'hf-resnet'}" and bare["hub"]["name"] == str(tmp_path / "hf-resnet")
    assert {**prefixed, "hub": None} == {**bare, "hub": None}
    assert {**prefixed["hub"], "name": None} == {**bare["hub"], "name": None}
