"""MAML-RL through the one trainer survives SIGKILL: a killed run resumed with
`fewshot train --resume` ends bit-identical to an uninterrupted one (issue 18)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fewshot.io import load_tensors

STEPS = 120


def _train_cli(run_dir):
    return [sys.executable, "-m", "fewshot", "train", "maml-rl", "--env", "tabular-mdp", "--meta-batch", "2",
            "--rollouts", "5", "--inner-lr", "0.5", "--backbone-option", "hidden=[16]", "--lr", "0.01",
            "--episodes", str(STEPS), "--val-split", "none", "--checkpoint-every", "10", "--out", str(run_dir),
            "--quiet"]


def _final(run_dir):
    state = json.loads((run_dir / "state.json").read_text())
    return load_tensors(run_dir / state["checkpoint"]), state


def test_maml_rl_resumes_after_sigkill_bit_identical(tmp_path):
    env = {**os.environ, "FEWSHOT_RUNS": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_train_cli(reference), env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cli(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        state_file = killed / "state.json"
        if state_file.exists() and json.loads(state_file.read_text()).get("step", 0) >= 30:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = json.loads((killed / "state.json").read_text())["step"]
    assert 30 <= step_at_kill < STEPS, "the run must be killed mid-way for this test to mean anything"

    resumed = subprocess.run([sys.executable, "-m", "fewshot", "train", "--resume", str(killed), "--quiet"],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    got, got_state = _final(killed)
    want, want_state = _final(reference)
    assert got_state["step"] == want_state["step"] == STEPS
    assert got.keys() == want.keys() and any(k.startswith("optim.") for k in want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    # The logged returns after the resume point are the uninterrupted run's, to the bit.
    assert got_state["history"]["train"][-3:] == want_state["history"]["train"][-3:]
    if got_state["history"]["train"] != want_state["history"]["train"]:
        pytest.fail("the training curve differs from the uninterrupted run's")
