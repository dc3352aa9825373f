"""navigation-2d: a point moves to a goal in the plane (Finn et al., 2017, arXiv:1703.03400, section 5.3); reward -distance.

Each task is a goal drawn uniformly from [-0.5, 0.5]². The point starts at the origin;
the observation is its position, an action is a velocity clipped to [-0.1, 0.1] per
axis, and the reward after each move is minus the Euclidean distance to the goal (as in
the authors' rllab code; the paper's text says squared distance). An episode ends
within 0.01 of the goal on both axes, or after 100 steps.
"""

from __future__ import annotations

import numpy as np
import torch

from .envs import EnvFamily

GOAL_RANGE = (-0.5, 0.5)
MAX_SPEED = 0.1
GOAL_TOLERANCE = 0.01
HORIZON = 100


class Navigation2D(EnvFamily):
    """2D navigation to a task-specific goal (see the module docstring)."""

    name = "navigation-2d"
    obs_dim = 2
    action_kind = "continuous"
    action_low, action_high = -MAX_SPEED, MAX_SPEED

    def __init__(self, horizon: int = HORIZON):
        self.action_dim, self.param_dim, self.horizon = 2, 2, int(horizon)
        # The point can move at most MAX_SPEED per axis and step from the origin.
        self.obs_low, self.obs_high = -MAX_SPEED * self.horizon, MAX_SPEED * self.horizon

    def sample_task(self, rng: np.random.Generator) -> torch.Tensor:
        return torch.from_numpy(rng.uniform(*GOAL_RANGE, size=2).astype(np.float32))

    def initial_state(self, params, generator):
        return torch.zeros_like(params)

    def observe(self, params, state):
        return state

    def transition(self, params, state, action, generator):
        position = state + action.to(state.dtype).clamp(-MAX_SPEED, MAX_SPEED)
        offset = position - params
        reward = -offset.norm(dim=-1)
        terminated = (offset.abs() < GOAL_TOLERANCE).all(dim=-1)
        return position, reward, terminated


__all__ = ["Navigation2D"]
