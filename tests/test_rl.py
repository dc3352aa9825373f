"""Meta-reinforcement learning (issue 18): environment families, the policy-gradient
estimator, MAML-RL's meta-gradient, training through the one trainer and evaluation."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.data import make_sampler
from fewshot.errors import ConfigError
from fewshot.evaluate import evaluate
from fewshot.methods import MAMLRL
from fewshot.models import MLP
from fewshot.rl import ENV_FAMILIES, BernoulliBandit, Navigation2D, RLTask, TabularMDP, rollout, sampler_class
from fewshot.runs import load_run
from fewshot.train import Trainer


def _policy(family, hidden=(8,), dtype=torch.float32, **options) -> MAMLRL:
    torch.manual_seed(0)
    backbone = MLP(family.obs_dim, hidden, out_features=family.action_dim).to(dtype)
    kind = "gaussian" if family.action_kind == "continuous" else "categorical"
    return MAMLRL(backbone, policy=kind, image_shape=(family.obs_dim,), **options).to(dtype)


# -- environments ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ENV_FAMILIES))
def test_every_family_passes_gymnasiums_env_checker(name):
    pytest.importorskip("gymnasium")
    from gymnasium.utils.env_checker import check_env

    from fewshot.rl.gym import TaskEnv, make_env

    family = ENV_FAMILIES[name]
    env = TaskEnv(family, family.sample_task(np.random.default_rng(3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker's warnings (bad bounds, dtypes) fail the test
        check_env(env, skip_render_check=True)
    # Wrapped at the horizon: an episode is truncated after exactly `horizon` steps unless it terminates.
    wrapped = make_env(family, family.sample_task(np.random.default_rng(4)))
    obs, _ = wrapped.reset(seed=0)
    assert wrapped.observation_space.contains(obs)
    for t in range(family.horizon):
        obs, reward, terminated, truncated, _ = wrapped.step(wrapped.action_space.sample())
        assert isinstance(reward, float) and wrapped.observation_space.contains(obs)
        if terminated:
            break
    assert terminated or (truncated and t == family.horizon - 1)


def test_navigation_follows_finn_et_al():
    family = Navigation2D()
    goals = torch.stack([family.sample_task(np.random.default_rng(i)) for i in range(200)])
    assert goals.abs().max() <= 0.5 and goals.std() > 0.2
    env = family.make(torch.tensor([[0.3, -0.2]]))
    assert torch.equal(env.reset(), torch.zeros(1, 2))
    obs, reward, terminated = env.step(torch.tensor([[5.0, -0.05]]))  # clipped to 0.1 per axis
    assert torch.allclose(obs, torch.tensor([[0.1, -0.05]]))
    assert reward.item() == pytest.approx(-math.hypot(0.2, 0.15)) and not terminated.item()
    obs, reward, terminated = env.step(torch.tensor([[0.1, -0.1]]))
    obs, reward, terminated = env.step(torch.tensor([[0.1, -0.05]]))
    assert terminated.item() and reward.item() == pytest.approx(0.0, abs=1e-6)  # at the goal


def test_reference_returns_are_exact():
    bandit = BernoulliBandit(5)
    p = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.2])
    env = bandit.make(p.expand(20000, -1), torch.Generator().manual_seed(0))
    env.reset()
    rewards = env.step(torch.full((20000,), 1))[1]
    assert rewards.mean().item() == pytest.approx(0.9, abs=0.01)
    assert bandit.expected_returns(p) == pytest.approx({"random": 0.4, "optimal": 0.9})
    # Tabular MDP: the random policy's exact value against a Monte Carlo estimate.
    mdp = TabularMDP()
    params = mdp.sample_task(np.random.default_rng(0))
    env = mdp.make(params.expand(20000, -1), torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    batch = rollout(env, lambda obs: torch.randint(0, 5, (obs.shape[0],), generator=gen), mdp.horizon)
    reference = mdp.expected_returns(params)
    returns = batch.returns().double()
    assert abs(returns.mean().item() - reference["random"]) < 4 * returns.std().item() / math.sqrt(20000)
    assert reference["optimal"] > reference["random"]


def test_seeded_tasks_are_reproducible():
    sampler = make_sampler("navigation-2d", None, "train", 1, 5, 5, seed=3)
    again = make_sampler("navigation-2d", None, "train", 1, 7, 9, seed=3)
    a, b = sampler.episode(11), again.episode(11)
    assert torch.equal(a.params, b.params) and a.rollout_seed == b.rollout_seed  # not on the rollout counts
    assert [t.index for t in sampler.batch(2, 4)] == [8, 9, 10, 11]
    splits = [{tuple(make_sampler("navigation-2d", None, s, 1, 5, 5).episode(i).params.tolist()) for i in range(50)}
              for s in ("train", "val", "test")]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    # The same task and policy give the same rollouts; the evaluation of a task is a function of it.
    policy = _policy(Navigation2D())
    one = policy.adapt_returns(sampler.episode(4), steps=2)
    two = policy.adapt_returns(sampler.episode(4), steps=2)
    assert np.array_equal(one, two)
    with pytest.raises(ConfigError, match="no split 'trainval'"):
        make_sampler("bandit-5", None, "trainval", 1, 5, 5)


def test_a_meta_batch_rolls_out_each_task_as_if_alone():
    """Tasks share one batch of environments but each draws from its own generator."""
    sampler = make_sampler("tabular-mdp", None, "train", 1, 6, 6, seed=1)
    policy = _policy(TabularMDP())
    tasks = sampler.batch(0, 3)
    shared = policy.parameters_dict(detach=True)
    together = policy.sample_tasks([shared] * 3, tasks, 6, [t.generator() for t in tasks])
    for task, batch in zip(tasks, together):
        alone = policy.sample_rollouts(shared, task, 6, task.generator())
        assert torch.equal(batch.actions, alone.actions) and torch.allclose(batch.rewards, alone.rewards)
    # Adapted (different) policies per task: the batched forward pass gives the same rollouts.
    nav = make_sampler("navigation-2d", None, "train", 1, 4, 4).batch(0, 2)
    policy = _policy(Navigation2D())
    start = policy.parameters_dict(detach=True)
    other = {n: p + 0.05 for n, p in start.items()}
    together = policy.sample_tasks([start, other], nav, 4, [t.generator() for t in nav])
    for params, task, batch in zip([start, other], nav, together):
        alone = policy.sample_rollouts(params, task, 4, task.generator())
        assert torch.allclose(batch.obs, alone.obs, atol=1e-5) and torch.allclose(batch.rewards, alone.rewards, atol=1e-5)


def test_discounted_returns_and_baseline():
    from fewshot.rl.rollouts import LinearFeatureBaseline, Rollouts, discounted_returns

    rewards, mask = torch.randn(7, 3), torch.ones(7, 3)
    mask[5:, 1] = 0  # rollout 1 terminated after 5 steps
    expected, running = torch.zeros(7, 3), torch.zeros(3)
    for t in range(6, -1, -1):
        running = rewards[t] * mask[t] + 0.9 * running
        expected[t] = running
    assert torch.allclose(discounted_returns(rewards, mask, 0.9), expected, atol=1e-6)
    # The baseline is a least-squares fit: on returns linear in its features it is exact.
    obs = torch.randn(7, 3, 2)
    batch = Rollouts(obs, torch.zeros(7, 3, 2), rewards, torch.ones(7, 3))
    target = 0.5 * obs[..., 0] - obs[..., 1] ** 2 + 2.0
    fitted = LinearFeatureBaseline().fit(batch, target).predict(batch)
    assert torch.allclose(fitted, target, atol=1e-3)


# -- the policy gradient and the meta-gradient ---------------------------------------------

@pytest.mark.parametrize("baseline", [False, True])
def test_policy_gradient_estimator_is_unbiased_on_a_bandit(baseline):
    """REINFORCE's estimate against the analytic gradient of J(θ) = Σ_a softmax(θ)_a p_a."""
    family = BernoulliBandit(5)
    p = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7], dtype=torch.float64)
    policy = _policy(family, hidden=(), dtype=torch.float64, baseline=baseline, normalize_advantages=False)
    with torch.no_grad():
        policy.backbone[-1].weight.copy_(torch.tensor([[0.2], [-0.4], [0.1], [0.5], [0.0]]))
        policy.backbone[-1].bias.zero_()
    n = 40000
    task = RLTask(family, p, rollout_seed=5, shot=n, query=n)
    params = policy.parameters_dict()
    batch = policy.sample_rollouts(params, task, n, task.generator())
    estimate = -torch.autograd.grad(policy.surrogate(params, batch), params["backbone.1.bias"])[0]
    # The logits are the bias (the input is the constant 1): ∂J/∂θ_a = π_a (p_a - J).
    logits = policy.backbone(torch.ones(1, 1, dtype=torch.float64))[0].detach()
    pi = torch.softmax(logits, 0)
    analytic = pi * (p - (pi * p).sum())
    # Per-rollout terms r_b (e_{a_b} - π) give the estimate's standard error.
    onehot = torch.nn.functional.one_hot(batch.actions[0].long(), 5).double()
    r = batch.rewards[0].double()
    terms = (r - r.mean() if baseline else r)[:, None] * (onehot - pi)
    se = terms.std(0) / math.sqrt(n)
    assert torch.all((estimate - analytic).abs() < 4 * se), (estimate, analytic, se)
    assert analytic.norm() > 20 * se.max()  # precise enough to tell a wrong sign or scale


def test_meta_gradient_matches_finite_differences():
    """The second-order meta-gradient through a policy-gradient inner step, on fixed rollouts, in float64."""
    family = Navigation2D(horizon=6)
    policy = _policy(family, hidden=(3,), dtype=torch.float64, inner_lr=0.5)
    task = RLTask(family, torch.tensor([0.3, -0.2], dtype=torch.float64), rollout_seed=1, shot=6, query=6)
    params = policy.parameters_dict()
    generator = task.generator()
    inner = policy.sample_rollouts(params, task, 6, generator)
    outer = policy.sample_rollouts(policy.inner_update(params, inner, False), task, 6, generator)
    names = list(params)
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def objective(vector: torch.Tensor, first_order: bool = False) -> torch.Tensor:
        pieces, start = {}, 0
        for n in names:
            size = params[n].numel()
            pieces[n] = vector[start:start + size].view_as(params[n])
            start += size
        return policy.meta_objective(pieces, [inner], outer, first_order=first_order)

    x = flat.clone().requires_grad_(True)
    exact = torch.autograd.grad(objective(x), x)[0]
    first = torch.autograd.grad(objective(x, first_order=True), x)[0]
    eps = 1e-6
    numeric = torch.empty_like(flat)
    for i in range(len(flat)):  # the inner step needs gradients: the points require them
        e = torch.zeros_like(flat)
        e[i] = eps
        plus, minus = objective((flat + e).requires_grad_()), objective((flat - e).requires_grad_())
        numeric[i] = (plus.detach() - minus.detach()) / (2 * eps)
    assert torch.allclose(exact, numeric, rtol=1e-5, atol=1e-7), (exact - numeric).abs().max()
    assert (first - numeric).abs().max() > 1e-3 * numeric.abs().max()  # second order matters here

    # loss() hands the trainer exactly this meta-gradient (same rollouts: the task's generator).
    policy.zero_grad()
    loss, metrics = policy.loss([task])
    loss.backward()
    got = torch.cat([p.grad.reshape(-1) for p in policy.parameters()])
    assert torch.allclose(got, exact, rtol=1e-10, atol=1e-12)
    assert metrics["return"] == pytest.approx(float(outer.returns().mean()))
    assert metrics["return_before"] == pytest.approx(float(inner.returns().mean()))


# -- the trainer, evaluation and the command line ------------------------------------------

def test_short_training_run_improves_return_after_adaptation(tmp_path):
    config = TrainConfig(method="maml-rl", dataset="navigation-2d", backbone="mlp",
                         backbone_options={"hidden": [32, 32]}, shot=10, query=10, meta_batch=8, episodes=12,
                         lr=0.01, val_split=None, checkpoint_every=100)
    result = Trainer(config, tmp_path / "run", runs=tmp_path).run(progress=False)
    assert result.metric == "return" and result.steps == 12
    _, method, state = load_run(tmp_path / "run")
    assert state["image_shape"] == [2] and method.policy == "gaussian"
    method.set_test_options(inner_steps=1)
    out = evaluate(method, make_sampler("navigation-2d", None, "test", 1, 10, 10), 40, progress=False)
    assert out.metric == "return" and out.per_step.shape == (40, 2)
    gain = out.per_step[:, 1] - out.per_step[:, 0]  # paired, task by task
    low = gain.mean() - 1.96 * gain.std(ddof=1) / math.sqrt(len(gain))
    assert low > 0, (gain.mean(), out.by_step())
    record = out.to_dict(per_episode=True)
    assert [s["steps"] for s in record["by_step"]] == [0, 1] and len(record["per_episode_by_step"]) == 40
    assert "by step 0:" in out.summary() and "1 adaptation step" in out.summary()


def test_cli_trains_and_evaluates_maml_rl(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "store"))
    run = tmp_path / "run"
    assert main(["train", "maml-rl", "--env", "bandit-5", "--meta-batch", "3", "--rollouts", "5", "--inner-lr", "0.5",
                 "--episodes", "4", "--val-every", "2", "--val-episodes", "3", "--first-order", "--out", str(run),
                 "--quiet"]) == 0
    assert "best validation return" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert (config["backbone"], config["shot"], config["query"]) == ("mlp", 5, 5)
    assert config["method_options"] == {"inner_lr": 0.5, "first_order": True}
    assert main(["evaluate", str(run), "--adapt-steps", "2", "--episodes", "6", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metric"] == "return" and [s["steps"] for s in result["by_step"]] == [0, 1, 2]
    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ENV_FAMILIES)
    assert main(["runs"]) == 0 and "return" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "maml-rl", "--dataset", "digits", "--backbone", "mlp"], "method 'maml-rl' does reinforcement only"),
    (["train", "protonet", "--env", "navigation-2d"], "for reinforcement data use one of: maml-rl"),
    (["train", "maml-rl", "--env", "navigation-2d", "-o", "discount=2"], "'discount' must be a finite number in [0, 1]"),
])
def test_bad_rl_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "run"), "--quiet", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_users_gymnasium_family_trains_with_maml_rl():
    gymnasium = pytest.importorskip("gymnasium")
    from fewshot.rl.gym import GymnasiumFamily

    class Line(gymnasium.Env):
        """A point on a line moving to a task's target (a user's environment)."""

        def __init__(self, target):
            self.target = float(target[0])
            self.observation_space = gymnasium.spaces.Box(-5, 5, (1,), np.float32)
            self.action_space = gymnasium.spaces.Box(-0.2, 0.2, (1,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.x = 0.0
            return np.array([self.x], np.float32), {}

        def step(self, action):
            self.x += float(np.clip(action[0], -0.2, 0.2))
            return np.array([self.x], np.float32), -abs(self.x - self.target), False, False, {}

    family = GymnasiumFamily("line", Line, lambda rng: rng.uniform(-1, 1, size=1), horizon=5)
    assert (family.obs_dim, family.action_kind, family.action_dim) == (1, "continuous", 1)
    sampler = sampler_class(family)(4, 4, seed=0)
    policy = _policy(family)
    loss, metrics = policy.loss(sampler.batch(0, 2))
    loss.backward()
    assert math.isfinite(loss.item()) and all(p.grad is not None for p in policy.parameters())
    assert np.array_equal(policy.adapt_returns(sampler.episode(1), 1), policy.adapt_returns(sampler.episode(1), 1))
