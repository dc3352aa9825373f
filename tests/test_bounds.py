"""Compute and memory named by a file or a flag are bounded before anything is allocated or run
(issue 34, case 14): step counts, episode counts, rollouts, and the meta-batch's data."""

import os
import subprocess
import sys
import time
import tracemalloc

import pytest
import torch

from fewshot import devices
from fewshot.config import TrainConfig
from fewshot.data import EpisodeSampler
from fewshot.data.sinusoid import SinusoidSampler
from fewshot.errors import ConfigError
from fewshot.evaluate import evaluate
from fewshot.memory import check_batch_data_fits
from fewshot.methods import ProtoNet
from fewshot.methods.transfer import wrap
from fewshot.models import MLP
from fewshot.params import MAX_EPISODES, MAX_PER_TASK, MAX_STEPS
from fewshot.data.tasks import TASK_FAMILIES
from fewshot.rl import ENV_FAMILIES, sampler_class
from fewshot.train import Trainer

from core_fixtures import digits8  # noqa: F401  (fixture)

TINY = dict(dataset="digits", backbone="conv4", backbone_options={"width": 8, "depth": 2}, way=5, shot=1, query=1,
            val_split=None, lr=3e-3, checkpoint_every=3)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fewshot", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _one_line_exit_2(proc):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- step counts named by a file ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["inner_steps", "test_inner_steps", "steps", "probe_steps"])
def test_a_config_naming_too_many_steps_is_refused(name):
    # The path of a run folder's config.json and of an exported model's description.
    values = {**TrainConfig(method="maml").to_dict(), "method_options": {name: 10**9}}
    with pytest.raises(ConfigError, match=f"{name}.*10000"):
        TrainConfig.from_dict(values)
    assert TrainConfig.from_dict({**values, "method_options": {name: MAX_STEPS}}).method_options[name] == MAX_STEPS
    assert TrainConfig.from_dict({**values, "method_options": {name: None}}).method_options[name] is None


def _export(path, config: dict, **description):
    from fewshot.export import write_model
    from fewshot.runs import build_model

    weights = build_model(TrainConfig.from_dict(config), (1, 8, 8)).state_dict()
    return write_model(path, {"config": config, "image_shape": [1, 8, 8], **description}, weights)


def test_an_exported_model_naming_too_many_steps_fails_in_one_line(tmp_path):
    from fewshot.learner import load

    config = TrainConfig(method="maml", **TINY).to_dict()
    path = _export(tmp_path / "maml.safetensors", config)
    assert load(path) is not None  # the honest export loads
    # The same export whose description asks for 10**9 test-time inner steps.
    bad = tmp_path / "bad.safetensors"
    from fewshot.export import read_model, write_model

    description, weights, _ = read_model(path)
    description["config"]["method_options"] = {"test_inner_steps": 10**9}
    write_model(bad, description, weights)
    with pytest.raises(ConfigError, match="test_inner_steps"):
        load(bad)
    # A strategy saved with the export, asking for 10**9 fine-tuning steps.
    proto = TrainConfig(method="protonet", **TINY).to_dict()
    strategy = _export(tmp_path / "ft.safetensors", proto, strategy={"name": "finetune", "options": {"steps": 10**9}})
    with pytest.raises(ConfigError, match="steps"):
        load(strategy)


def test_a_strategy_naming_too_many_steps_is_refused():
    backbone = MLP(4, (8,))
    with pytest.raises(ConfigError, match="steps"):
        wrap(backbone, "finetune", steps=10**9)
    with pytest.raises(ConfigError, match="probe_steps"):
        wrap(backbone, "lp-ft", probe_steps=10**9)
    with pytest.raises(ConfigError, match="cv_grid.*steps"):  # a grid's candidates are bounded too
        wrap(backbone, "finetune", cv=True, cv_grid={"steps": [10, 10**9]})
    assert wrap(backbone, "finetune", steps=MAX_STEPS) is not None


def test_cli_inner_steps_beyond_the_bound_fail_at_once(tmp_path):
    start = time.perf_counter()
    proc = _cli("train", "maml", "--dataset", "digits", "--inner-steps", "1000000", "--cpu-minutes", "0.05",
                "--out", str(tmp_path / "run"), "--runs", str(tmp_path))
    _one_line_exit_2(proc)
    assert "inner_steps" in proc.stderr and time.perf_counter() - start < 120
    assert not (tmp_path / "run").exists()


# -- episode counts -----------------------------------------------------------------------------


def test_evaluate_refuses_too_many_episodes_before_allocating(digits8):
    sampler = EpisodeSampler(digits8, "test", 5, 1, 1, seed=0)
    method = ProtoNet(MLP(64, (8,)))
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="at most 1,000,000 episodes"):
            evaluate(method, sampler, 10**12, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
    assert MAX_EPISODES == 10**6


def test_val_episodes_are_bounded():
    with pytest.raises(ConfigError, match="val_episodes"):
        TrainConfig(val_episodes=10**12)
    assert TrainConfig(val_episodes=MAX_EPISODES).val_episodes == MAX_EPISODES


def test_cli_evaluate_with_too_many_episodes_is_one_line_exit_2(tmp_path):
    # An untrained method needs no run folder; the bound is checked before the suite is drawn.
    proc = _cli("evaluate", "pixel-ncm", "--dataset", "digits", "--episodes", str(10**12), "--runs", str(tmp_path))
    _one_line_exit_2(proc)
    assert "1,000,000" in proc.stderr


# -- rollouts and points per task ---------------------------------------------------------------


def test_rollouts_are_bounded_before_any_rollout():
    cls = TASK_FAMILIES["bandit-5"]
    assert cls is TASK_FAMILIES["bandit-5"] and sampler_class(ENV_FAMILIES["bandit-5"]).family is cls.family
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="rollouts"):
            cls(10**7, 10**7, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
    assert cls(MAX_PER_TASK, 1, seed=0).shot == MAX_PER_TASK
    with pytest.raises(ConfigError, match="query"):
        SinusoidSampler(5, 10**9, seed=0)


def test_cli_maml_rl_huge_rollouts_is_one_line_exit_2(tmp_path):
    proc = _cli("train", "maml-rl", "--env", "bandit-5", "--rollouts", str(10**7), "--episodes", "1",
                "--device", "cpu", "--out", str(tmp_path / "run"), "--runs", str(tmp_path))
    _one_line_exit_2(proc)
    assert "rollouts" in proc.stderr


# -- the meta-batch's data ----------------------------------------------------------------------


def test_batch_data_check_extrapolates_from_one_episode(digits8):
    sampler = EpisodeSampler(digits8, "train", 5, 1, 1, seed=0)
    probe = sampler.batch(0, 1)
    one = sum(t.numel() * t.element_size() for t in (probe[0].support_x, probe[0].support_y,
                                                    probe[0].query_x, probe[0].query_y))
    cpu = torch.device("cpu")
    assert check_batch_data_fits(probe, 100, cpu, available=100 * one) is None
    message = check_batch_data_fits(probe, 100_000, cpu, available=100 * one)
    assert "--meta-batch" in message and "100,000" in message and "\n" not in message


def test_a_huge_meta_batch_is_refused_before_it_is_drawn(tmp_path, digits8, monkeypatch):
    sizes = []
    batch = EpisodeSampler.batch

    def recording(self, step, size):
        sizes.append(size)
        return batch(self, step, size)

    monkeypatch.setattr(EpisodeSampler, "batch", recording)
    monkeypatch.setattr(devices, "available_memory", lambda device: 50 * 2**20)  # 50 MB free
    config = TrainConfig(method="maml", episodes=3, meta_batch=100_000, **TINY)
    with pytest.raises(ConfigError, match="meta-batch"):
        Trainer(config, tmp_path / "run", dataset=digits8, device="cpu").run(progress=False, record=False)
    assert max(sizes) == 1  # only the probe episode was drawn
    assert not (tmp_path / "run").exists()
