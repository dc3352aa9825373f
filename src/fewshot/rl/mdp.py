"""tabular-mdp: random tabular MDPs, 10 states, 5 actions, horizon 10 (Duan et al., 2016, RL², arXiv:1611.02779).

Each task draws, for every (state, action), a transition distribution from a flat
Dirichlet (all concentrations 1) and a mean reward from N(1, 1), as Duan et al.; an
observed reward is that mean plus unit Gaussian noise. Every episode starts in state
0 (our choice; the paper does not fix one) and lasts 10 steps; the observation is the
state, one-hot. The optimal and the uniformly random policies' expected returns are
computed exactly by dynamic programming over the horizon
(:meth:`TabularMDP.expected_returns`).
"""

from __future__ import annotations

import numpy as np
import torch

from .envs import EnvFamily
from .rng import normal, uniform


class TabularMDP(EnvFamily):
    """A random tabular MDP (see the module docstring); parameters are the flattened
    transition table ``(S, A, S)`` followed by the mean rewards ``(S, A)``."""

    name = "tabular-mdp"
    action_kind = "discrete"
    obs_low, obs_high = 0.0, 1.0
    obs_dim = 10

    def __init__(self, states: int = 10, actions: int = 5, horizon: int = 10):
        self.states, self.action_dim, self.horizon = int(states), int(actions), int(horizon)
        self.obs_dim = self.states
        self.param_dim = self.states * self.action_dim * (self.states + 1)

    def tables(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(transitions (B, S, A, S), mean rewards (B, S, A))`` of a batch of tasks."""
        s, a = self.states, self.action_dim
        return params[:, : s * a * s].view(-1, s, a, s), params[:, s * a * s:].view(-1, s, a)

    def sample_task(self, rng: np.random.Generator) -> torch.Tensor:
        s, a = self.states, self.action_dim
        transitions = rng.dirichlet(np.ones(s), size=(s, a))
        rewards = rng.normal(1.0, 1.0, size=(s, a))
        return torch.from_numpy(np.concatenate([transitions.ravel(), rewards.ravel()]).astype(np.float32))

    def initial_state(self, params, generator):
        return torch.zeros(params.shape[0], dtype=torch.long, device=params.device)

    def observe(self, params, state):
        return torch.nn.functional.one_hot(state, self.states).to(params.dtype)

    def transition(self, params, state, action, generator):
        transitions, rewards = self.tables(params)
        rows = torch.arange(params.shape[0], device=params.device)
        action = action.long().view(-1)
        mean = rewards[rows, state, action]
        noise = normal(generator, mean.shape, mean)
        cdf = transitions[rows, state, action].cumsum(-1)
        u = uniform(generator, (params.shape[0], 1), cdf)
        following = (cdf < u).sum(-1).clamp_max(self.states - 1)  # inverse-CDF sampling
        return following, mean + noise, torch.zeros_like(state, dtype=torch.bool)

    def expected_returns(self, params: torch.Tensor) -> dict[str, float]:
        """Exact expected returns from state 0 over the horizon: the optimal policy's
        (backward induction) and the uniformly random policy's."""
        transitions, rewards = self.tables(params.double().view(1, -1))
        transitions, rewards = transitions[0], rewards[0]
        best = torch.zeros(self.states, dtype=torch.float64)
        rand = torch.zeros(self.states, dtype=torch.float64)
        for _ in range(self.horizon):
            best = (rewards + transitions @ best).max(-1).values
            rand = (rewards + transitions @ rand).mean(-1)
        return {"random": float(rand[0]), "optimal": float(best[0])}


__all__ = ["TabularMDP"]
