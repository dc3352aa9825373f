"""TRPO (Schulman et al., 2015, arXiv:1502.05477) as MAML-RL's meta-update (Finn et al., 2017,
arXiv:1703.03400; issue 33): conjugate gradient, the Fisher-vector product through the
inner step, the constrained step and training through the one trainer, resumed exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fewshot.config import TrainConfig
from fewshot.data import make_sampler
from fewshot.errors import ConfigError
from fewshot.io import load_tensors
from fewshot.methods import MAMLRL
from fewshot.models import MLP
from fewshot.rl import Navigation2D, RLTask, TabularMDP
from fewshot.rl.trpo import conjugate_gradient, fisher_vector_product, trpo_step
from fewshot.train import Trainer


def _policy(family, hidden=(4,), dtype=torch.float64, **options) -> MAMLRL:
    torch.manual_seed(0)
    backbone = MLP(family.obs_dim, hidden, out_features=family.action_dim).to(dtype)
    kind = "gaussian" if family.action_kind == "continuous" else "categorical"
    options = {"outer": "trpo", **options}
    return MAMLRL(backbone, policy=kind, image_shape=(family.obs_dim,), **options).to(dtype)


def test_conjugate_gradient_solves_a_small_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=6)  # exact in n steps, up to rounding
    assert torch.allclose(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)
    few = conjugate_gradient(lambda v: a @ v, b, iters=2)
    assert (a @ few - b).norm() < b.norm()  # fewer steps: an approximation that still reduces the residual


def _closures(family, first_order, task_params, shot=5, **options):
    policy = _policy(family, first_order=first_order, inner_lr=0.5, **options)
    tasks = [RLTask(family, p.to(torch.float64), rollout_seed=i, shot=shot, query=shot) for i, p in enumerate(task_params)]
    inner, outer = policy.sample_meta_batch(tasks)
    return policy, inner, outer, *policy.trpo_closures(inner, outer)


@pytest.mark.parametrize("first_order", [False, True])
def test_fisher_vector_product_is_the_explicit_fisher_matrix_through_the_inner_step(first_order):
    """On a tiny categorical policy: F = mean_s J_sᵀ (diag p - p pᵀ) J_s, with J_s the Jacobian of
    the adapted policy's logits at state s with respect to θ (through the inner step)."""
    family = TabularMDP()
    import numpy as np
    params = [family.sample_task(np.random.default_rng(i)) for i in range(2)]
    policy, inner, outer, objective, kl, x0 = _closures(family, first_order, params, shot=3)
    n = x0.numel()
    fisher = torch.zeros(n, n, dtype=torch.float64)
    for batches, batch in zip(inner, outer):
        obs = batch.obs.reshape(-1, batch.obs.shape[-1])
        mask = batch.mask.reshape(-1)

        def logits(vector, batches=batches, obs=obs):
            fast = policy.unflatten(vector)
            for b in batches:
                fast = policy.inner_update(fast, b, create_graph=not first_order)
            return policy._policy_output(fast, obs)

        jac = torch.autograd.functional.jacobian(logits, x0.clone().requires_grad_(True))  # (S, A, n)
        p = torch.softmax(logits(x0.clone().requires_grad_(True)), -1).detach()
        metric = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # (S, A, A)
        per_state = torch.einsum("sai,sab,sbj->sij", jac, metric, jac)
        fisher += (per_state * mask.view(-1, 1, 1)).sum(0) / mask.sum() / len(outer)
    v = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = fisher_vector_product(kl, x0, v)
    assert torch.allclose(got, fisher @ v, rtol=1e-6, atol=1e-10), (got - fisher @ v).abs().max()
    assert (fisher @ v).norm() > 1e-3  # a real product, not zero
    assert torch.allclose(fisher_vector_product(kl, x0, v, damping=0.1), fisher @ v + 0.1 * v, rtol=1e-6, atol=1e-10)


def test_a_trpo_step_keeps_the_kl_constraint_and_improves_the_surrogate():
    family = Navigation2D(horizon=10)
    goals = [torch.tensor([0.3, -0.2]), torch.tensor([-0.4, 0.1])]
    policy, inner, outer, objective, kl, x0 = _closures(family, False, goals, shot=8, max_kl=0.01)
    result = trpo_step(objective, kl, x0, max_kl=0.01)
    assert result.accepted
    after = x0 + result.step
    assert float(kl(after).detach()) <= 0.01 and result.kl == pytest.approx(float(kl(after).detach()))
    assert float(objective(after.clone().requires_grad_(True))) < float(objective(x0.clone().requires_grad_(True)))
    # The step is the largest the constraint allows along the natural gradient, shortened by the
    # line search only: without a trust region the same direction would go much further.
    assert result.kl > 0.01 * 0.8 ** (2 * result.backtracks + 2)
    wide = trpo_step(objective, kl, x0, max_kl=1.0)
    assert wide.step.norm() > result.step.norm()


def test_loss_hands_the_trainer_the_trpo_step(monkeypatch):
    import fewshot.methods.maml_rl as module

    taken = []

    def recording(*args, **kwargs):
        taken.append(trpo_step(*args, **kwargs))
        return taken[-1]

    monkeypatch.setattr(module, "trpo_step", recording)
    family = Navigation2D(horizon=10)
    policy = _policy(family, inner_lr=0.5)
    assert policy.own_step and policy.get_params()["outer"] == "trpo"
    task = RLTask(family, torch.tensor([0.3, -0.2], dtype=torch.float64), rollout_seed=1, shot=6, query=6)
    policy.zero_grad()
    loss, metrics = policy.loss([task])
    loss.backward()
    (expected,) = taken
    assert expected.accepted and expected.step.norm() > 0
    got = torch.cat([p.grad.reshape(-1) for p in policy.parameters()])
    assert torch.equal(got, -expected.step)  # the trainer's SGD at rate 1 adds exactly the step
    assert metrics["kl"] == expected.kl and 0 < metrics["kl"] <= 0.01
    with pytest.raises(ConfigError, match="outer"):
        _policy(family, outer="sgd")


def test_trpo_trains_through_the_trainer_with_its_own_step(tmp_path):
    config = TrainConfig(method="maml-rl", dataset="navigation-2d", backbone="mlp",
                         backbone_options={"hidden": [16, 16]}, shot=10, query=10, meta_batch=4, episodes=6,
                         val_split=None, checkpoint_every=100, method_options={"outer": "trpo"})
    trainer = Trainer(config, tmp_path / "run", runs=tmp_path)
    assert isinstance(trainer.optimizer, torch.optim.SGD) and trainer.optimizer.param_groups[0]["lr"] == 1.0
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    result = trainer.run(progress=False)
    assert result.steps == 6
    moved = sum(float((v - before[k]).norm()) for k, v in trainer.method.state_dict().items())
    assert moved > 0
    with pytest.raises(ConfigError, match="cosine"):
        Trainer(TrainConfig(**{**config.to_dict(), "lr_schedule": "cosine"}), tmp_path / "other", runs=tmp_path)


def _kill_and_resume(tmp_path, argv, kill_at, total):
    """Train ``argv`` uninterrupted and, in another folder, SIGKILL it once ``kill_at`` steps are
    checkpointed, then resume: the final weights must be bit-identical."""
    env = {**os.environ, "FEWSHOT_RUNS": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "fewshot", "train", *argv, "--episodes", str(total), "--checkpoint-every", "1",
           "--quiet"]
    subprocess.run([*cli, "--out", str(tmp_path / "reference")], env=env, check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cli, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads((killed / "state.json").read_text()).get("step", 0) >= kill_at:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = json.loads((killed / "state.json").read_text())["step"]
    assert kill_at <= step < total, "the run must be killed mid-way for this test to mean anything"
    resumed = subprocess.run([sys.executable, "-m", "fewshot", "train", "--resume", str(killed), "--quiet"],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    states = [json.loads((d / "state.json").read_text()) for d in (killed, tmp_path / "reference")]
    got, want = (load_tensors(d / s["checkpoint"]) for d, s in zip((killed, tmp_path / "reference"), states))
    assert states[0]["step"] == states[1]["step"] == total
    assert got.keys() == want.keys()
    for key in want:
        if key != "rng.torch":
            assert torch.equal(got[key], want[key]), key
    assert states[0]["history"] == states[1]["history"]


def test_trpo_resumes_bit_identically_after_sigkill(tmp_path):
    _kill_and_resume(tmp_path, ["maml-rl", "--env", "bandit-5", "-o", "outer=trpo", "--meta-batch", "4",
                                "--rollouts", "10", "--inner-lr", "0.5", "--val-every", "10", "--val-episodes", "3"],
                     kill_at=8, total=40)
