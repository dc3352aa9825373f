"""Issue 34, cases 5, 6, 11, 13 and 17: an exported model's description is read through one
declared schema, its weights are compared with the model before it is built, and run
folders' state and config are bounded the same way; the zoo records a run's real depth."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

import fewshot
from fewshot import TrainConfig, Trainer
from fewshot.errors import CheckpointError
from fewshot.runs.schema import check_description

TINY = dict(dataset="digits", backbone_options={"width": 8}, way=5, shot=1, query=5, episodes=6, val_every=3,
            val_episodes=4, checkpoint_every=3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("schema") / "run"
    Trainer(TrainConfig(**TINY), path).run(progress=False, record=False)
    return path


@pytest.fixture
def folder(run, tmp_path):
    return fewshot.load(run).save(tmp_path / "model")


def edit(folder, change):
    description = json.loads((folder / "config.json").read_text())
    change(description)
    (folder / "config.json").write_text(json.dumps(description))
    return folder


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "fewshot", *map(str, argv)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("temperature", [0, -1, math.nan, "abc"])
def test_temperature_must_be_finite_and_positive(folder, temperature):
    edit(folder, lambda d: d["calibration"].update(temperature=temperature))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'calibration\.temperature' must be a finite "
                                              r"number > 0"):
        fewshot.load(folder)


@pytest.mark.parametrize("field, value, said", [("calibration", "abc", "field 'calibration' must be an object"),
                                                ("strategy", "abc", "field 'strategy' must be an object"),
                                                ("config", [1], "field 'config' must be an object")])
def test_wrongly_typed_fields_are_one_line(folder, field, value, said, tmp_path):
    edit(folder, lambda d: d.update({field: value}))
    with pytest.raises(CheckpointError, match=said):
        fewshot.load(folder)
    (tmp_path / "q").mkdir()
    out = cli("export", folder, "--out", tmp_path / "again")
    assert out.returncode == 2 and said in out.stderr and str(folder) in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_temperature_in_a_file_export_is_checked_too(run, tmp_path):
    path = fewshot.load(run).save(tmp_path / "model.safetensors")
    tensors = load_file(path)
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        description = json.loads(f.metadata()["fewshot"])
    description["calibration"]["temperature"] = -1.0
    save_file(tensors, path, metadata={"fewshot": json.dumps(description)})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: its description: field 'calibration\.temperature'"):
        fewshot.load(path)


def test_weights_of_the_wrong_dtype_are_refused_not_cast(folder):
    weights = folder / "model.safetensors"
    from safetensors import safe_open
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    tensors = {k: (v * 100).to(torch.int8) if v.is_floating_point() else v for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata=metadata)
    with pytest.raises(CheckpointError, match=r"is int8 where the model holds float32"):
        fewshot.load(folder)


def test_a_fitted_head_record_is_checked(folder):
    description = json.loads((folder / "config.json").read_text())
    good = {**description, "fitted": {"head": "nearest-centroid", "head_options": {}, "classes": ["a", 1, 2.5]}}
    assert check_description(good, "config.json") is good
    for bad, said in [({"head": "x", "head_options": {}, "classes": []}, "field 'fitted.classes'"),
                      ({"head": "", "head_options": {}, "classes": ["a"]}, "field 'fitted.head'"),
                      ({"head": "x", "head_options": "abc", "classes": ["a"]}, "field 'fitted.head_options'")]:
        with pytest.raises(CheckpointError, match=said):
            check_description({**description, "fitted": bad}, "config.json")


PEAK = textwrap.dedent("""
    import resource, sys
    import fewshot
    try:
        fewshot.load(sys.argv[1])
        print("loaded")
    except fewshot.FewShotError as e:
        print("refused:", e)
    print("peak", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
""")


def peak_of_loading(path):
    """What loading ``path`` says, and its process's peak resident memory in bytes."""
    out = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    said, peak = out.stdout.strip().splitlines()[-2:]
    return said, int(peak.split()[1])


# A Python with torch and fewshot imported takes a few hundred MB; building a Conv-4 of width
# 4096 and depth 3 takes 1.2 GB more (two 4096 x 4096 x 3 x 3 float32 convolutions; depth
# 16: 9 GB, issue 34), so 1 GiB separates failing fast from building.
FAST = 2**30


def test_huge_inputs_claimed_by_an_export_fail_fast(folder):
    edit(folder, lambda d: (d.update(image_shape=[1, 3000, 3000]), d["preprocessing"].update(height=3000, width=3000)))
    said, peak = peak_of_loading(folder)
    assert said.startswith("refused:") and "field 'image_shape'" in said and "at most 1024" in said
    assert peak < FAST


@pytest.mark.parametrize("depth, said", [(16, "cannot take 1x8x8 inputs"),  # found by the dry run, on meta
                                         (3, "does not match the model its description builds")])  # by the weights
def test_a_huge_backbone_claimed_by_an_export_fails_fast(folder, depth, said):
    edit(folder, lambda d: d["config"]["backbone_options"].update(width=4096, depth=depth))
    refused, peak = peak_of_loading(folder)
    assert refused.startswith("refused:") and said in refused, refused
    assert peak < FAST, peak


def test_run_folders_are_checked_before_building(run, tmp_path):
    import shutil

    copy = shutil.copytree(run, tmp_path / "run")
    config = json.loads((copy / "config.json").read_text())
    config["backbone_options"] = {"width": 4096, "depth": 3}
    (copy / "config.json").write_text(json.dumps(config))
    said, peak = peak_of_loading(copy)
    assert said.startswith("refused:") and "does not match" in said and peak < FAST, (said, peak)
    (copy / "config.json").write_text((run / "config.json").read_text())
    state = json.loads((copy / "state.json").read_text())
    state["image_shape"] = [1, 3000, 3000]
    (copy / "state.json").write_text(json.dumps(state))
    said, peak = peak_of_loading(copy)
    assert said.startswith("refused:") and "has no valid 'image_shape'" in said and peak < FAST


def test_zoo_add_records_the_depth_a_run_chose_for_its_images(run, tmp_path):
    from fewshot.select.index import Zoo

    assert "depth" not in json.loads((run / "config.json").read_text())["backbone_options"]
    zoo = Zoo(tmp_path / "zoo", create=True)
    entry = zoo.add("digits-run", run)
    meta = zoo.metadata("digits-run")
    assert meta["architecture"] == "conv4" and meta["architecture_options"] == {"width": 8, "depth": 2}
    assert entry["feature_dim"] == zoo.load("digits-run").metadata["feature_dim"]


@pytest.mark.parametrize("change, said", [
    (lambda d: d["calibration"].pop("temperature"), "field 'calibration' lacks 'temperature'"),
    (lambda d: d.update(strategy={"options": {}}), "field 'strategy' lacks 'name'"),
    (lambda d: d["preprocessing"].update(channels=1024, height=1024, width=1024),
     "field 'preprocessing' must describe inputs of"),
    (lambda d: d["preprocessing"].update(height=0), "field 'preprocessing.height' must be an integer in [1, 1024]"),
    (lambda d: d.update(strategy={"name": "finetune", "options": "abc"}), "field 'strategy.options' must be an object"),
])
def test_required_fields_and_bounds(folder, change, said):
    description = json.loads((folder / "config.json").read_text())
    change(description)
    with pytest.raises(CheckpointError, match=said.replace("[", r"\[").replace("]", r"\]")):
        check_description(description, "config.json")
