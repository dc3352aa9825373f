"""Half-cheetah direction and velocity families (Finn et al., 2017, arXiv:1703.03400; issue 33):
an optional extra that needs Gymnasium's MuJoCo environments (``pip install 'fewshot[locomotion]'``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshot.rl.locomotion import available

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


def test_half_cheetah_families_run_a_few_steps_and_reward_the_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warnings log (MUJOCO_LOG.TXT) to the working folder
    from fewshot.methods import MAMLRL, RL2
    from fewshot.models import MLP
    from fewshot.rl import RLTask, sampler_class
    from fewshot.rl.locomotion import half_cheetah_direction, half_cheetah_velocity

    direction, velocity = half_cheetah_direction(horizon=5), half_cheetah_velocity(horizon=5)
    assert (direction.obs_dim, direction.action_dim, direction.action_kind) == (17, 6, "continuous")
    tasks = {float(direction.sample_task(np.random.default_rng(i))[0]) for i in range(20)}
    assert tasks == {-1.0, 1.0}
    speeds = torch.stack([velocity.sample_task(np.random.default_rng(i)) for i in range(50)])
    assert 0 <= speeds.min() and speeds.max() <= 2 and speeds.std() > 0.3
    # The same actions forward and backward: the progress terms are opposite, the control cost the same.
    actions = torch.full((5, 2, 6), 0.5)
    total = []
    for d in (1.0, -1.0):  # the same reset seed for both: the same trajectory
        env = direction.make(torch.tensor([[d]]), torch.Generator().manual_seed(0))
        env.reset()
        total.append(sum(float(env.step(a[:1])[1]) for a in actions))
    total = torch.tensor(total)
    control = 5 * 0.05 * 6 * 0.25
    assert torch.allclose(total[0] + control, -(total[1] + control), atol=1e-4) and total[0] != total[1]
    # maml-rl and rl2 run on them.
    torch.manual_seed(0)
    policy = MAMLRL(MLP(17, [8], out_features=6), policy="gaussian", image_shape=(17,))
    sampler = sampler_class(velocity)(2, 2, seed=0)
    loss, metrics = policy.loss(sampler.batch(0, 2))
    loss.backward()
    assert np.isfinite(metrics["return"]) and all(p.grad is not None for p in policy.parameters())
    rl2 = RL2(MLP(17, [8], out_features=6), policy="gaussian", image_shape=(17,), hidden_size=8)
    returns = rl2.adapt_returns(RLTask(direction, torch.tensor([1.0]), rollout_seed=3, shot=2, query=2))
    assert returns.shape == (2,) and np.isfinite(returns).all()
