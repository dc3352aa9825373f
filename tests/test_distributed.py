"""Multi-process meta-training gives the single-process result (2 CPU processes, gloo)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from fewshot.config import TrainConfig
from fewshot.data.tasks import input_shape
from fewshot.distributed import check_split
from fewshot.errors import ConfigError
from fewshot.io import load_tensors
from fewshot.runs import build_model


def _train(run_dir, *extra):
    env = {**os.environ, "FEWSHOT_RUNS": str(run_dir.parent / "store"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fewshot", "train", "protonet", "--dataset", "digits", "--backbone", "mlp",
           "--backbone-option", "hidden=[32]", "--way", "5", "--shot", "2", "--query", "3", "--meta-batch", "4",
           "--episodes", "12", "--val-split", "none", "--optimizer", "sgd", "--lr", "0.05", "--out", str(run_dir), "--quiet", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((run_dir / "state.json").read_text())
    return load_tensors(run_dir / state["checkpoint"]), state


def test_two_processes_match_one(tmp_path):
    single, single_state = _train(tmp_path / "single")
    double, double_state = _train(tmp_path / "double", "--nproc", "2")
    assert double_state["step"] == single_state["step"] == 12
    for key, value in single.items():
        if key.startswith(("model.", "optim.")):
            assert torch.allclose(double[key], value, rtol=1e-5, atol=1e-6), (key, (double[key] - value).abs().max())
    # The logged loss is the mean over the whole meta-batch in both cases.
    for (s1, l1, a1), (s2, l2, a2) in zip(single_state["history"]["train"], double_state["history"]["train"]):
        assert s1 == s2 and abs(l1 - l2) < 1e-5 and abs(a1 - a2) < 1e-6


def _train_rl(run_dir, outer, *extra):
    env = {**os.environ, "FEWSHOT_RUNS": str(run_dir.parent / "store"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fewshot", "train", "maml-rl", "--env", "navigation-2d", "--meta-batch", "4",
           "--rollouts", "5", "--backbone-option", "hidden=[16]", "--lr", "0.01", "--episodes", "4",
           "--val-split", "none", "-o", f"outer={outer}", "--out", str(run_dir), "--quiet", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((run_dir / "state.json").read_text())
    return load_tensors(run_dir / state["checkpoint"]), state


def test_maml_rl_two_processes_match_one(tmp_path):
    # Each task's rollouts depend only on its seed and the policy (fewshot.rl.rng), so
    # the tasks a process rolls out alone are those the single process rolls out together,
    # up to the rounding of the batched policy; the summed meta-gradients are the mean's.
    single, single_state = _train_rl(tmp_path / "single", "adam")
    double, double_state = _train_rl(tmp_path / "double", "adam", "--nproc", "2")
    assert double_state["step"] == single_state["step"] == 4
    for key, value in single.items():
        if key.startswith(("model.", "optim.")):
            assert torch.allclose(double[key], value, rtol=1e-4, atol=1e-5), (key, (double[key] - value).abs().max())
    for (s1, l1, r1), (s2, l2, r2) in zip(single_state["history"]["train"], double_state["history"]["train"]):
        assert s1 == s2 and abs(l1 - l2) < 1e-4 and abs(r1 - r2) < 1e-3



def test_maml_rl_trpo_refuses_several_processes(tmp_path):
    # TRPO's step (conjugate gradient and line search under a KL bound) is computed from the
    # whole meta-batch: processes holding halves would each take another step, so it is
    # refused, in one line before any process starts, rather than train something else.
    run_dir = tmp_path / "double"
    env = {**os.environ, "FEWSHOT_RUNS": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fewshot", "train", "maml-rl", "--env", "navigation-2d", "--meta-batch", "4",
           "--rollouts", "5", "--backbone-option", "hidden=[16]", "--episodes", "4", "--val-split", "none",
           "-o", "outer=trpo", "--out", str(run_dir), "--quiet", "--nproc", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0 and "drop --nproc" in proc.stderr, proc.stderr[-2000:]
    assert not (run_dir / "state.json").exists()


def test_check_split_refuses_only_methods_that_compute_their_own_update():
    # A launch that bypasses the CLI (torchrun directly) meets the same check in the trainer.
    def method(name, **options):
        config = TrainConfig(method=name, dataset="bandit-5", backbone="mlp", meta_batch=4, method_options=options)
        return build_model(config, input_shape("bandit-5", None))

    check_split(method("maml-rl"), 2)  # Adam's meta-gradient is a sum over tasks
    for own in (method("rl2"), method("maml-rl", outer="trpo")):
        check_split(own, 1)
        with pytest.raises(ConfigError, match="drop --nproc"):
            check_split(own, 2)
