"""The CPU budget inside a step (issue 34, case 14): a long MAML inner loop stops at the
budget, the abandoned meta-iteration leaves nothing behind, and runs that do not reach
their budget are unchanged (bit-identical resume included)."""

import contextlib
import json
import time

import pytest
import torch

from fewshot import budget
from fewshot.config import TrainConfig
from fewshot.data import EpisodeSampler
from fewshot.io import load_tensors
from fewshot.methods import MAML
from fewshot.models import Conv4
from fewshot.train import Trainer

from core_fixtures import digits8  # noqa: F401  (fixture)

TINY = dict(dataset="digits", backbone="conv4", backbone_options={"width": 16, "depth": 2}, way=5, shot=2, query=3,
            val_split=None, lr=3e-3, method="maml")


def _weights(run_dir):
    state = json.loads((run_dir / "state.json").read_text())
    return load_tensors(run_dir / state["checkpoint"]), state


def test_check_raises_only_past_the_deadline_of_its_block():
    budget.check()  # no deadline: nothing
    with budget.cpu_deadline(time.process_time() + 3600):
        budget.check()
    with budget.cpu_deadline(time.process_time() - 1):
        with pytest.raises(budget.OutOfBudget):
            budget.check()
    budget.check()  # the block's deadline ended with it


def test_maml_loss_stops_between_inner_steps_once_the_budget_is_spent(digits8, monkeypatch):
    torch.manual_seed(0)
    model = MAML(Conv4(1, width=8, depth=2), way=5, inner_steps=5, image_shape=(1, 8, 8))
    episodes = EpisodeSampler(digits8, "train", 5, 2, 3, seed=0).batch(0, 4)
    calls = []
    monkeypatch.setattr(budget, "check", lambda: calls.append(1))
    want, _ = model.loss(episodes)
    checks = len(calls)  # one before every inner step of every chunk of tasks
    assert checks >= 5
    calls.clear()

    def check():  # a deadline met after the first inner step: the loop stops before the second
        calls.append(1)
        if len(calls) > 1:
            raise budget.OutOfBudget("spent")

    monkeypatch.setattr(budget, "check", check)
    with pytest.raises(budget.OutOfBudget):
        model.loss(episodes)
    monkeypatch.undo()
    assert len(calls) == 2 < checks
    assert all(p.grad is None for p in model.parameters())
    # A deadline not reached changes nothing.
    with budget.cpu_deadline(time.process_time() + 3600):
        got, _ = model.loss(episodes)
    assert torch.equal(got, want)


def test_cpu_budget_is_honoured_inside_one_long_inner_loop(tmp_path, digits8):
    # One meta-iteration of 10,000 inner steps on 4 tasks takes far longer than the
    # budget (0.6 CPU-s); it used to run to its end, and be applied, before the budget was
    # looked at. (Validation and calibration after training adapt with test_inner_steps:
    # they are not cut by the budget.)
    config = TrainConfig(episodes=5, meta_batch=4, cpu_minutes=0.01, **TINY,
                         method_options={"inner_steps": 10_000, "first_order": True, "test_inner_steps": 1})
    trainer = Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path)
    initial = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    started = time.process_time()
    result = trainer.run(progress=False)
    spent = time.process_time() - started
    assert result.steps == 0  # the abandoned meta-iteration is not counted ...
    weights, state = _weights(tmp_path / "run")
    for name, value in initial.items():  # ... nor applied
        assert torch.equal(weights[f"model.{name}"], value), name
    assert state["done"] and state["best"]["step"] == 0 and state["cpu_seconds"] >= 0.6
    assert spent < 0.6 + 10  # a bounded overrun: one inner step, validation and checkpoint
    again = Trainer(config, tmp_path / "run", dataset=digits8, runs=tmp_path).run(resume=True, progress=False)
    assert again.steps == 0 and again.finished_before  # a spent budget trains no further on resume


def test_a_step_abandoned_mid_way_and_resumed_is_the_uninterrupted_run(tmp_path, digits8, monkeypatch):
    # The budget is large: a stand-in check says it ran out in the middle of step 3.
    config = TrainConfig(episodes=6, meta_batch=3, cpu_minutes=100.0, method_options={"inner_steps": 2}, **TINY)
    calls, within = [], []  # the checks made within a training step's deadline (not calibration's)
    real = budget.cpu_deadline

    @contextlib.contextmanager
    def deadline(at):
        within.append(at is not None)
        try:
            with real(at):
                yield
        finally:
            within.pop()

    monkeypatch.setattr(budget, "cpu_deadline", deadline)
    monkeypatch.setattr(budget, "check", lambda: calls.append(1) if within and within[-1] else None)
    Trainer(TrainConfig(**{**config.to_dict(), "episodes": 3}), tmp_path / "three", dataset=digits8,
            runs=tmp_path).run(progress=False)
    stop_at = len(calls) + 2  # the second check of step 3 (steps 0, 1, 2 are complete)
    calls.clear()

    def check():
        if within and within[-1]:
            calls.append(1)
            if len(calls) == stop_at:
                raise budget.OutOfBudget("spent")

    monkeypatch.setattr(budget, "check", check)
    Trainer(config, tmp_path / "cut", dataset=digits8, runs=tmp_path).run(progress=False)
    cut, state = _weights(tmp_path / "cut")
    assert state["step"] == 3 and state["checkpoint"] == "checkpoint-0000003.safetensors"
    three, _ = _weights(tmp_path / "three")
    assert cut.keys() == three.keys() and all(torch.equal(cut[k], three[k]) for k in three)  # step 3 left no trace
    monkeypatch.undo()
    resumed = Trainer(config, tmp_path / "cut", dataset=digits8, runs=tmp_path).run(resume=True, progress=False)
    Trainer(config, tmp_path / "whole", dataset=digits8, runs=tmp_path).run(progress=False)
    got, _ = _weights(tmp_path / "cut")
    want, _ = _weights(tmp_path / "whole")
    assert resumed.steps == 6 and got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
