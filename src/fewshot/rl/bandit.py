"""bandit-K: Bernoulli multi-armed bandits with task-specific arm means (Duan et al., 2016, RL², arXiv:1611.02779).

Each task draws the K arms' success probabilities uniformly from [0, 1] (as Duan et
al.). A rollout is ``horizon`` pulls (1 by default: K rollouts are K pulls, so
"adapting on 20 rollouts" is learning from 20 pulls); the observation is a constant 1,
so a policy is a distribution over arms, and a pull pays 1 with its arm's probability.
The random policy's expected return per pull is the mean of the arms' probabilities,
the best arm's probability is the oracle's.
"""

from __future__ import annotations

import numpy as np
import torch

from .envs import EnvFamily
from .rng import uniform


class BernoulliBandit(EnvFamily):
    """K-armed Bernoulli bandit (see the module docstring)."""

    obs_dim = 1
    action_kind = "discrete"
    obs_low, obs_high = 0.0, 1.0  # the observation is always 1

    def __init__(self, arms: int = 5, horizon: int = 1):
        self.action_dim, self.param_dim, self.horizon = int(arms), int(arms), int(horizon)
        self.name = f"bandit-{arms}"

    def sample_task(self, rng: np.random.Generator) -> torch.Tensor:
        return torch.from_numpy(rng.uniform(0.0, 1.0, size=self.param_dim).astype(np.float32))

    def initial_state(self, params, generator):
        return torch.ones(params.shape[0], 1, dtype=params.dtype, device=params.device)

    def observe(self, params, state):
        return state

    def transition(self, params, state, action, generator):
        p = params.gather(1, action.long().view(-1, 1)).squeeze(1)
        reward = (uniform(generator, p.shape, p) < p).to(params.dtype)
        return state, reward, torch.zeros_like(reward, dtype=torch.bool)

    def expected_returns(self, params: torch.Tensor) -> dict[str, float]:
        """Per rollout: the random policy's (mean arm) and the oracle's (best arm) expected return."""
        p = params.double().view(-1)
        return {"random": float(p.mean()) * self.horizon, "optimal": float(p.max()) * self.horizon}


__all__ = ["BernoulliBandit"]
