"""The Run (fewshot.runs.Run): one object owns a run folder and opens every form a
trained model takes; a reader of a live run reads a consistent (state, weights) pair."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import fewshot
from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.errors import CheckpointError, ConfigError
from fewshot.io import save_tensors, write_json
from fewshot.runs import Exported, Protocol, Run, load_run
from fewshot.runs import folder as run_folder
from fewshot.train import Trainer

from core_fixtures import digits8  # noqa: F401  (fixture)

TINY = dict(dataset="digits", backbone="conv4", backbone_options={"width": 8, "depth": 2}, way=4, shot=2, query=3,
            episodes=4, checkpoint_every=2, val_every=2, val_episodes=4, lr=3e-3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits8):  # noqa: F811
    run = tmp_path_factory.mktemp("run") / "run"
    Trainer(TrainConfig(**TINY), run, dataset=digits8).run(progress=False, record=False)
    return run


def test_a_run_reads_its_config_state_weights_and_protocol(run_dir):
    run = Run(run_dir)
    assert run.config.method == "protonet" and run.state["step"] == 4 and run.state["done"]
    assert run.protocol == Protocol(way=4, shot=2, query=3, seed=0, episodes=600)
    loaded = run.load("last")
    assert loaded.weights_file == run_dir / run.state["checkpoint"] and loaded.state["step"] == 4
    assert loaded.source == {"run": str(run_dir), "weights": "last", "steps": 4, "data": run.state["data"]}
    assert loaded.preprocessing.image_shape == (1, 8, 8)
    # The same method as the public readers give.
    config, method, state = load_run(run_dir, "last")
    assert all(torch.equal(a, b) for a, b in zip(method.state_dict().values(), loaded.method.state_dict().values()))


def test_the_default_protocol_is_the_configs_and_flags_given_replace_it():
    assert Protocol.of() == Protocol(5, 1, 15, 0, 600)
    given = Protocol(4, 2, 3).given(way=None, shot=5, query=None, seed=7, episodes=None)
    assert given == Protocol(4, 5, 3, 7, 600)
    assert Protocol(4, 2, 3).given(way=0).way == 0  # 0 is given (and refused by the sampler), not "unset"


def test_evaluate_uses_the_runs_own_protocol(run_dir, tmp_path, capsys):
    assert main(["evaluate", str(run_dir), "--episodes", "3", "--json", "--quiet", "--runs", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["way"], result["shot"], result["query"], result["episodes"]) == (4, 2, 3, 3)


def test_open_reads_every_form_and_names_what_it_cannot(run_dir, tmp_path):
    assert isinstance(Run.open(run_dir), Run)
    learner = fewshot.load(run_dir, calibration_episodes=0)
    learner.save(tmp_path / "model.safetensors")
    learner.save(tmp_path / "model")
    for form in ("model.safetensors", "model"):
        opened = Run.open(tmp_path / form)
        assert isinstance(opened, Exported)
        loaded = opened.load()
        assert loaded.config == learner.config and loaded.state is None
        assert all(torch.equal(a, b) for a, b in zip(loaded.method.state_dict().values(),
                                                     learner.method.state_dict().values()))
    # A Hugging Face folder is recognised, and refused in one line saying what to do.
    hub = tmp_path / "hf"
    hub.mkdir()
    (hub / "config.json").write_text(json.dumps({"model_type": "resnet", "architectures": ["ResNetModel"]}))
    save_tensors(hub / "model.safetensors", {"w": torch.zeros(2)})
    for opener in (Run.open, fewshot.load):
        with pytest.raises(ConfigError, match="Hugging Face model folder.*fewshot zoo add NAME") as e:
            opener(hub)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="neither a run folder"):
        Run.open(tmp_path / "nothing")


def test_find_lists_the_runs_below_a_folder(run_dir, tmp_path):
    assert Run.find(run_dir) == [run_dir]
    assert Run.find(run_dir.parent) == [run_dir]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no fewshot run"):
        Run.find(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="not a fewshot run folder"):
        Run.find(tmp_path / "missing")


def _advance(run_dir, state, step):
    """What a live trainer does between a reader's two reads: a new checkpoint, a state
    naming it, the old checkpoint removed."""
    new = f"checkpoint-{step:07d}.safetensors"
    shutil.copyfile(run_dir / state["checkpoint"], run_dir / new)
    old = state["checkpoint"]
    write_json(run_dir / "state.json", {**state, "step": step, "checkpoint": new})
    (run_dir / old).unlink()
    return new


def test_a_reader_racing_the_writer_reads_a_consistent_pair(run_dir, tmp_path, monkeypatch):
    live = tmp_path / "live"
    shutil.copytree(run_dir, live)
    state = json.loads((live / "state.json").read_text())
    real = run_folder.load_tensors
    calls = []

    def racing(path):
        if not calls:  # between the reader's state and its weights, the writer moves on
            calls.append(_advance(live, state, state["step"] + 2))
        else:
            calls.append(path.name)
        return real(path)

    monkeypatch.setattr(run_folder, "load_tensors", racing)
    loaded = Run(live).load("last")
    assert loaded.state["step"] == 6 and loaded.weights_file.name == "checkpoint-0000006.safetensors"
    assert calls == ["checkpoint-0000006.safetensors", "checkpoint-0000006.safetensors"]
    # fewshot.load (and so `fewshot export` and `predict`) reads through it too.
    calls.clear()
    state = json.loads((live / "state.json").read_text())
    assert fewshot.load(live, which="last", calibration_episodes=0).source["steps"] == 8


def test_a_file_the_state_still_names_is_really_missing(run_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    state = json.loads((broken / "state.json").read_text())
    (broken / state["checkpoint"]).unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        Run(broken).load("last")


def test_the_run_is_the_one_writer_of_run_files(run_dir, tmp_path, digits8):  # noqa: F811
    """A second trainer into a used folder is refused before it writes; the Run's lock
    and refusal messages are the trainer's."""
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(TrainConfig(**TINY), run_dir, dataset=digits8).run(progress=False, record=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer(TrainConfig(**TINY), tmp_path / "none", dataset=digits8).run(resume=True, progress=False)
    assert not (tmp_path / "none").exists()
