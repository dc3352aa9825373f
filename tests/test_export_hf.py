"""Issue 26 item 5: `fewshot export --format hf` writes a folder huggingface_hub loads
(PyTorchModelHubMixin.from_pretrained, offline, from the local folder), with a model card;
`fewshot zoo add` accepts every form `fewshot export` writes, and says no staging path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import fewshot
from fewshot import TrainConfig, Trainer
from fewshot.data import load_dataset
from fewshot.errors import CheckpointError
from fewshot.select.index import Zoo

TINY = dict(dataset="digits", backbone_options={"width": 8}, way=5, shot=1, query=5, episodes=6, val_every=3,
            val_episodes=4, checkpoint_every=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "run"
    Trainer(TrainConfig(**TINY), path).run(progress=False, record=False)
    return path


@pytest.fixture(scope="module")
def hf_folder(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hfout") / "model"
    done = subprocess.run([sys.executable, "-m", "fewshot", "export", str(run), "--format", "hf", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def test_hf_export_has_config_weights_and_a_model_card(hf_folder, run):
    assert sorted(p.name for p in hf_folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (hf_folder / "README.md").read_text()
    state = json.loads((run / "state.json").read_text())
    assert "library_name: fewshot" in card and "**Training data**: digits" in card and "protonet" in card
    assert "5-way 1-shot, 5 queries per class" in card
    accuracy = state["best"]["accuracy"]
    assert (f"{100 * accuracy:.1f} %" if accuracy is not None else "**Accuracy**: not recorded") in card


def test_model_card_states_the_recorded_accuracy(hf_folder):
    from fewshot.runs.hfexport import model_card

    description = json.loads((hf_folder / "config.json").read_text())
    card = model_card(description, {"best": {"accuracy": 0.8125, "ci95": 0.021, "step": 300}})
    assert "**Accuracy**: 81.2 % ± 2.1 on the validation split" in card and "step 300" in card
    uncalibrated = model_card({**description, "calibration": {"temperature": 1.0, "fitted": False, "why": "no data"}})
    assert "**Calibration**: not fitted (temperature 1): no data" in uncalibrated
    calibration = json.loads((hf_folder / "config.json").read_text())["calibration"]
    assert ("**Calibration**: temperature" in card) == bool(calibration.get("fitted"))


def test_round_trip_through_from_pretrained(hf_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from fewshot.runs.hfexport import FewShotHubModel

    model = FewShotHubModel.from_pretrained(hf_folder)
    learner = fewshot.load(hf_folder)
    ours = learner.method.state_dict()
    assert ours.keys() == model.model.state_dict().keys()
    assert all(torch.equal(v, model.model.state_dict()[k]) for k, v in ours.items())
    digits = load_dataset("digits")
    x = digits.images[:10].float() / 255 if digits.images.dtype == torch.uint8 else digits.images[:10]
    labels = torch.arange(5).repeat(1)
    model.eval()
    with torch.no_grad():
        logits = model(x[:5], labels, x[5:])
    assert logits.shape == (5, 5) and torch.isfinite(logits).all()
    assert model.temperature == pytest.approx(learner.temperature)


def test_from_pretrained_refuses_a_damaged_description(hf_folder, tmp_path):
    import shutil

    from fewshot.runs.hfexport import FewShotHubModel

    copy = shutil.copytree(hf_folder, tmp_path / "copy")
    description = json.loads((copy / "config.json").read_text())
    description["calibration"]["temperature"] = 0
    (copy / "config.json").write_text(json.dumps(description))
    with pytest.raises(CheckpointError, match="calibration.temperature"):
        FewShotHubModel.from_pretrained(copy)


def test_hf_export_replaces_its_own_export(run, hf_folder):
    out = fewshot.load(run).save(hf_folder, card="# again\n")
    assert (out / "README.md").read_text() == "# again\n"


def test_zoo_add_accepts_everything_export_writes(run, hf_folder, tmp_path):
    learner = fewshot.load(run)
    file_export = learner.save(tmp_path / "model.safetensors")
    folder_export = learner.save(tmp_path / "folder")
    zoo = Zoo(tmp_path / "zoo", create=True)
    widths = set()
    for name, source in [("run", run), ("file", file_export), ("folder", folder_export), ("hf", hf_folder)]:
        entry = zoo.add(name, source)
        assert entry["architecture"] == "conv4" and entry["objective"] == "protonet"
        zoo.check(name)
        widths.add(entry["feature_dim"])
        assert zoo.metadata(name)["architecture_options"] == {"width": 8, "depth": 2}
    assert len(widths) == 1


def test_no_staging_path_in_zoo_messages(run, tmp_path):
    damaged = fewshot.load(run).save(tmp_path / "bad")
    description = json.loads((damaged / "config.json").read_text())
    description["config"]["backbone_options"] = {"width": 16}
    (damaged / "config.json").write_text(json.dumps(description))
    zoo_dir = tmp_path / "zoo"
    done = subprocess.run([sys.executable, "-m", "fewshot", "zoo", "add", "m", str(damaged), "--zoo", str(zoo_dir)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "does not match" in done.stderr, done.stderr
    assert ".add-" not in done.stderr and ".tmp" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in zoo_dir.iterdir() if not p.name.startswith(".")) == ["zoo.json"]
