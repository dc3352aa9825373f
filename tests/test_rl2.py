"""RL² (Duan et al., 2016, arXiv:1611.02779; Wang et al., 2016, arXiv:1611.05763; issue 33): the GRU
policy's memory spans a trial and is reset between trials, PPO across tasks learns a bandit,
and training through the one trainer resumes bit-identically after SIGKILL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fewshot.config import TrainConfig
from fewshot.errors import ConfigError
from fewshot.evaluate import evaluate
from fewshot.data import make_sampler
from fewshot.methods import RL2
from fewshot.models import MLP
from fewshot.rl import BernoulliBandit, Navigation2D, RLTask, gae, sampler_class
from fewshot.train import Trainer

from test_trpo import _kill_and_resume


def _rl2(family, **options) -> RL2:
    torch.manual_seed(0)
    kind = "gaussian" if family.action_kind == "continuous" else "categorical"
    return RL2(MLP(family.obs_dim, [8], out_features=family.action_dim), policy=kind, image_shape=(family.obs_dim,),
               **options)


def test_hidden_state_is_kept_within_a_trial_and_reset_between_trials():
    family = Navigation2D(horizon=5)
    policy = _rl2(family, episodes_per_trial=3, hidden_size=6)
    seen = []  # (hidden state given, hidden state returned) of every step
    step = policy.net.step

    def recording(inputs, hidden):
        out, value, new = step(inputs, hidden)
        seen.append((hidden.clone(), new.clone(), inputs.clone()))
        return out, value, new

    policy.net.step = recording
    task = RLTask(family, torch.tensor([0.3, -0.2]), rollout_seed=1, shot=4, query=4)
    first = policy.adapt_returns(task)
    assert first.shape == (3,)
    assert len(seen) == 15
    assert torch.equal(seen[0][0], torch.zeros(4, 6))  # a trial starts from zero
    for t in (5, 10):  # the first step of episodes 2 and 3 starts from the last state of the one before
        assert torch.equal(seen[t][0], seen[t - 1][1]) and seen[t][0].abs().sum() > 0
        assert torch.equal(seen[t][2][:, :2], torch.zeros(4, 2))  # the point is back at the origin ...
        assert (seen[t][2][:, -1] == 1).all()  # ... and the new-episode flag is up
    assert (seen[1][2][:, -1] == 0).all() and (seen[0][2][:, 2:] == 0).all()  # no previous action or reward yet
    seen.clear()
    policy.adapt_returns(task)  # the next trial: reset again, and the same trials (seeded) as the first
    assert torch.equal(seen[0][0], torch.zeros(4, 6))
    # The memory matters: the same observation at the start of episode 2 gives another output than at episode 1.
    out1, _, _ = step(seen[0][2], seen[0][0])
    out2, _, _ = step(seen[5][2], seen[5][0])
    assert not torch.allclose(out1, out2)
    # Replaying the recorded inputs (training's pass) gives the sampling pass's states.
    trials = policy.sample_trials([task], 4, 3)[0]
    policy.net.step = step
    out, _ = policy.net.unroll(trials.inputs, trials.mask)
    assert torch.allclose(out[0], step(seen[0][2], seen[0][0])[0])


def test_gae_skips_masked_steps_and_spans_the_trial():
    rewards = torch.tensor([[1.0], [2.0], [0.0], [3.0]])
    values = torch.tensor([[0.5], [0.2], [9.0], [0.1]])
    mask = torch.tensor([[1.0], [1.0], [0.0], [1.0]])  # step 2 masked (its episode had ended)
    adv = gae(rewards, values, mask, discount=0.9, lam=0.5)
    d3 = 3.0 - 0.1
    d1 = 2.0 + 0.9 * 0.1 - 0.2
    d0 = 1.0 + 0.9 * 0.2 - 0.5
    a3, a1 = d3, d1 + 0.45 * d3
    assert torch.allclose(adv.squeeze(1), torch.tensor([d0 + 0.45 * a1, a1, 0.0, a3]))


def test_rl2_learns_a_two_armed_bandit_quickly():
    family = BernoulliBandit(2)
    sampler = sampler_class(family)(8, 8, seed=0)
    policy = _rl2(family, episodes_per_trial=10, hidden_size=32, ppo_lr=1e-2, gae_lambda=0.3)
    test = sampler_class(family)(50, 50, seed=0, split="test")
    untrained = np.array([policy.adapt_returns(t) for t in test.suite(200)])
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)  # as the trainer does for own_step
    for step in range(200):
        optimizer.zero_grad()
        loss, _ = policy.loss(sampler.batch(step, 16))
        loss.backward()
        optimizer.step()
    trained = np.array([policy.adapt_returns(t) for t in test.suite(200)])
    gain = trained[:, 5:].mean(1) - trained[:, 0]  # later pulls against the first, task by task
    assert gain.mean() - 3 * gain.std(ddof=1) / math.sqrt(len(gain)) > 0, (trained.mean(0), gain.mean())
    assert trained[:, 5:].mean() > untrained[:, 5:].mean() + 0.04 and trained[:, 5:].mean() > 0.55


def test_rl2_trains_and_evaluates_through_the_trainer(tmp_path):
    config = TrainConfig(method="rl2", dataset="navigation-2d", backbone="mlp", shot=4, query=4, meta_batch=2,
                         episodes=3, val_every=3, val_episodes=2, checkpoint_every=100,
                         method_options={"hidden_size": 8, "episodes_per_trial": 2})
    trainer = Trainer(config, tmp_path / "run", runs=tmp_path)
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert trainer.method.backbone is None and sum(p.numel() for p in trainer.method.parameters()) > 0
    result = trainer.run(progress=False)
    assert result.steps == 3 and result.metric == "return" and math.isfinite(result.best_return)
    assert float(trainer.method.adam_t) == 3 * 4  # PPO's Adam took ppo_epochs steps per trainer step
    trainer.method.set_test_options(inner_steps=2)
    out = evaluate(trainer.method, make_sampler("navigation-2d", None, "test", 1, 3, 3), 4, progress=False)
    assert out.per_step.shape == (4, 3)  # returns of episodes 1, 2, 3 of each trial
    with pytest.raises(ConfigError, match="inner_steps"):
        trainer.method.set_test_options(inner_steps=-1)
    with pytest.raises(ConfigError, match="ppo_epochs"):
        _rl2(Navigation2D(), ppo_epochs=0)


def test_rl2_resumes_bit_identically_after_sigkill(tmp_path):
    _kill_and_resume(tmp_path, ["rl2", "--env", "bandit-5", "--meta-batch", "4", "--rollouts", "6", "-o",
                                "episodes_per_trial=10", "-o", "hidden_size=16", "--val-every", "10",
                                "--val-episodes", "3"], kill_at=8, total=40)
