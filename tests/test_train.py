"""The trainer: checkpoints, resume after a real SIGKILL, validation bookkeeping."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fewshot.config import TrainConfig
from fewshot.errors import CheckpointError, ConfigError
from fewshot.io import load_tensors
from fewshot.runs import load_run
from fewshot.train import Trainer

from core_fixtures import digits8  # noqa: F401  (fixture)

# A tiny Conv-4 on 8x8 digits: milliseconds a step.
TINY = dict(dataset="digits", backbone="conv4", backbone_options={"width": 16, "depth": 2}, way=5, shot=2, query=3,
            val_split=None, lr=3e-3)


def _final_weights(run_dir):
    state = json.loads((run_dir / "state.json").read_text())
    return load_tensors(run_dir / state["checkpoint"]), state


def test_training_learns_and_keeps_atomic_checkpoints(tmp_path, digits8):
    config = TrainConfig(episodes=60, checkpoint_every=25, **TINY)
    result = Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path).run(progress=False)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    # One checkpoint (the newest) and one best file survive; no temporary files are left.
    assert files == ["best-0000060.safetensors", "checkpoint-0000060.safetensors", "config.json", "state.json"]
    history = json.loads((tmp_path / "run" / "state.json").read_text())["history"]["train"]
    assert history[-1][1] < history[0][1]  # the loss went down
    assert result.steps == 60 and result.run_id == 1


def test_rerunning_into_a_used_folder_is_refused(tmp_path, digits8):
    config = TrainConfig(episodes=2, **TINY)
    Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path).run(progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path).run(progress=False)
    with pytest.raises(ConfigError, match="different config"):
        Trainer(TrainConfig(episodes=3, **TINY), tmp_path / "run", dataset=digits8, runs=tmp_path).run(
            resume=True, progress=False)


def test_validation_keeps_the_best_weights(tmp_path, digits8):
    config = TrainConfig(episodes=40, val_every=10, val_episodes=20,
                         **{**TINY, "val_split": "test"})
    Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path).run(progress=False)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    vals = state["history"]["val"]
    assert [v[0] for v in vals] == [10, 20, 30, 40]
    best = max(vals, key=lambda v: v[1])
    assert state["best"]["step"] == best[0] and state["best"]["accuracy"] == pytest.approx(best[1])
    _, method, _ = load_run(tmp_path / "run", "best")
    saved = load_tensors(tmp_path / "run" / state["best"]["file"])
    assert torch.equal(method.state_dict()["backbone.0.0.weight"], saved["model.backbone.0.0.weight"])


def test_truncated_checkpoint_is_reported(tmp_path, digits8):
    Trainer(TrainConfig(episodes=3, **TINY), tmp_path / "run", dataset=digits8, runs=tmp_path).run(progress=False)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    path = tmp_path / "run" / state["checkpoint"]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_run(tmp_path / "run", "last")


def _train_cli(run_dir, *extra):
    return [sys.executable, "-m", "fewshot", "train", "protonet", "--dataset", "digits", "--backbone", "conv4",
            "--backbone-option", "width=16", "--backbone-option", "depth=2", "--way", "5", "--shot", "2",
            "--query", "3", "--val-split", "none", "--lr", "0.003", "--episodes", "1500",
            "--checkpoint-every", "20", "--out", str(run_dir), "--quiet", *extra]


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "FEWSHOT_RUNS": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_train_cli(reference), env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cli(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        state_file = killed / "state.json"
        if state_file.exists():
            try:
                if json.loads(state_file.read_text()).get("step", 0) >= 100:
                    break
            except json.JSONDecodeError:  # pragma: no cover - state.json is written atomically
                pytest.fail("state.json was observed half-written")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = json.loads((killed / "state.json").read_text())["step"]
    assert 100 <= step_at_kill < 1500, "the run must be killed mid-way for this test to mean anything"

    resumed = subprocess.run([sys.executable, "-m", "fewshot", "train", "--resume", str(killed), "--quiet"],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    got, got_state = _final_weights(killed)
    want, want_state = _final_weights(reference)
    assert got_state["step"] == want_state["step"] == 1500
    assert got.keys() == want.keys()
    for key in want:
        if key != "rng.torch":
            assert torch.equal(got[key], want[key]), key
    # The training curve after the resume point is the uninterrupted one.
    assert got_state["history"]["train"][-5:] == want_state["history"]["train"][-5:]


def test_cpu_budget_stops_training_validated_and_checkpointed(tmp_path, digits8):
    config = TrainConfig(episodes=100000, cpu_minutes=0.01, **TINY)
    result = Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path).run(progress=False)
    assert 0 < result.steps < 100000 and result.cpu_seconds >= 0.6
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["checkpoint"] == f"checkpoint-{result.steps:07d}.safetensors" and state["best"]["step"] == result.steps
    again = Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path).run(resume=True, progress=False)
    assert again.steps == result.steps  # a spent budget trains no further on resume


def test_pausing_at_cpu_marks_checkpoints_a_run_that_resumes_as_one(tmp_path, digits8):
    config = TrainConfig(episodes=100000, cpu_minutes=0.03, **TINY)
    trainer = Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path)
    first = trainer.run(progress=False, pause_at_cpu_minutes=0.01)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    # Paused: checkpointed at the step it stopped, not finished, not validated, not recorded.
    assert first.paused and 0 < first.steps < 100000 and first.run_id is None
    assert 0.6 <= state["cpu_seconds"] < 1.8 and not state["done"] and state["best"] is None
    assert state["checkpoint"] == f"checkpoint-{first.steps:07d}.safetensors"
    # A resume paused at a mark already passed trains nothing.
    same = Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path).run(
        resume=True, progress=False, pause_at_cpu_minutes=0.005)
    assert same.paused and same.steps == first.steps
    second = Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path).run(
        resume=True, progress=False, pause_at_cpu_minutes=0.02)
    assert second.paused and second.steps > first.steps
    last = Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path).run(resume=True, progress=False)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert not last.paused and last.steps > second.steps and state["done"] and last.cpu_seconds >= 1.8
    assert state["best"]["step"] == last.steps and last.run_id == 1  # finished as a --cpu-minutes run finishes


def test_a_paused_run_resumes_exactly_as_an_uninterrupted_one(tmp_path, digits8):
    config = TrainConfig(episodes=300, **TINY)
    Trainer(config, tmp_path / "whole", dataset=digits8, runs=tmp_path).run(progress=False)
    paused = Trainer(config, tmp_path / "paused", dataset=digits8, runs=tmp_path).run(
        progress=False, pause_at_cpu_minutes=0.002)
    assert paused.paused and 0 < paused.steps < 300, "the pause must fall mid-run for this test to mean anything"
    Trainer(config, tmp_path / "paused", dataset=digits8, runs=tmp_path).run(resume=True, progress=False)
    got, got_state = _final_weights(tmp_path / "paused")
    want, want_state = _final_weights(tmp_path / "whole")
    assert got_state["step"] == want_state["step"] == 300
    for key in want:
        if key != "rng.torch":
            assert torch.equal(got[key], want[key]), key
    assert got_state["history"]["train"] == want_state["history"]["train"]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_a_bad_pause_is_refused_before_anything_is_written(tmp_path, digits8, bad):
    with pytest.raises(ConfigError, match="pause_at_cpu_minutes"):
        Trainer(TrainConfig(episodes=5, **TINY), tmp_path / "run", dataset=digits8).run(
            progress=False, pause_at_cpu_minutes=bad)
    assert not (tmp_path / "run").exists()
