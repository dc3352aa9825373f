"""Crash safety (issue 7): a training process killed (SIGKILL) in the middle of writing a
checkpoint loses nothing but the write in progress.

The child process is the real command line with one change: ``fewshot.io.atomic_path``
stops, on the chosen write, after the temporary file has been written, cuts that file
short (a write in progress) and waits to be killed before the rename. The test kills it
there, checks that the previous checkpoint is intact and still the one ``state.json``
names, and that ``--resume`` ends with exactly the weights of an uninterrupted run. Only
the killed run needs a process of its own; the others run in this one (on one thread,
as the child), which keeps the test to a few process start-ups.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fewshot.cli import main
from fewshot.io import load_tensors

from test_train import _final_weights, _train_cli

STEPS = ["--episodes", "200", "--val-every", "60"]  # checkpoints every 20 steps; best weights every 60

CHILD = r'''
import contextlib, sys, time
from pathlib import Path

import fewshot.io

target, marker = sys.argv[1], Path(sys.argv[2])
real_atomic_path = fewshot.io.atomic_path


def chosen(path: Path, tmp: Path) -> bool:
    if target == "state.json":  # the state write that would name the step-60 checkpoint
        return path.name == "state.json" and '"checkpoint": "checkpoint-0000060.safetensors"' in tmp.read_text()
    return path.name == target


@contextlib.contextmanager
def stalled(path):
    with real_atomic_path(path) as tmp:
        yield tmp
        if chosen(Path(path), tmp):
            data = tmp.read_bytes()
            tmp.write_bytes(data[: len(data) // 2])
            marker.write_text(str(tmp))
            time.sleep(600)  # killed here, before the rename


fewshot.io.atomic_path = stalled
from fewshot.cli import main

sys.exit(main(sys.argv[3:]))
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "FEWSHOT_RUNS": str(tmp_path_factory.mktemp("store")), "OMP_NUM_THREADS": "1"}


def train_here(argv, env) -> int:
    """``fewshot ARGV`` in this process, on one thread like the child (same floating-point results)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main([*argv, "--runs", env["FEWSHOT_RUNS"]])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env):
    """The same run without interruption (200 steps), and one stopped at step 40."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    assert train_here(_train_cli(folder / "full", *STEPS)[3:], env) == 0
    assert train_here(_train_cli(folder / "short", *STEPS, "--episodes", "40")[3:], env) == 0
    return folder / "full", folder / "short"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("target", ["checkpoint-0000060.safetensors", "best-0000060.safetensors", "state.json"])
def test_sigkill_during_a_checkpoint_write_loses_nothing(tmp_path, env, uninterrupted, target):
    full, short = uninterrupted
    run = tmp_path / "run"
    marker = tmp_path / "writing"
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    argv = _train_cli(run, *STEPS)[3:]  # the arguments after `python -m fewshot`
    proc = subprocess.Popen([sys.executable, str(child), target, str(marker), *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert marker.exists(), f"the chosen write never happened: {proc.stderr.read().decode()[-2000:]}"
        partial = tmp_path / marker.read_text().strip()
        assert partial.exists() and partial.name.startswith(f".{target}.")  # the write is under way
        previous = run / json.loads((run / "state.json").read_text())["checkpoint"]
        before = sha256(previous)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    # The previous checkpoint is intact, and still the one state.json names.
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 40 and state["checkpoint"] == "checkpoint-0000040.safetensors"
    assert previous.name == state["checkpoint"] and sha256(previous) == before
    got, want = load_tensors(previous), load_tensors(short / "checkpoint-0000040.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not (run / target).exists() or target == "state.json"
    assert partial.exists()  # the killed write's leftover, until a resume clears it

    assert train_here(["train", "--resume", str(run), "--quiet"], env) == 0
    got, got_state = _final_weights(run)
    want, want_state = _final_weights(full)
    assert got_state["step"] == want_state["step"] == 200
    assert got.keys() == want.keys()
    for key in want:
        if key != "rng.torch":
            assert torch.equal(got[key], want[key]), key
    assert got_state["history"]["train"] == want_state["history"]["train"]
    # Nothing is left of the killed write, nor of the checkpoints state.json no longer names.
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in full.iterdir())
