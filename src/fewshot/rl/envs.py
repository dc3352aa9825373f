"""Task families of environments, vectorised in torch: the interface every family implements.

A *task family* is a distribution over environments (Finn, Abbeel & Levine, 2017,
arXiv:1703.03400, section 3.2): each task is a parameter vector (a goal, the arms'
means, an MDP's transition and reward tables) and an environment built from it. A
family here is an :class:`EnvFamily`: it draws one task's parameters from a NumPy
generator (:meth:`EnvFamily.sample_task`) and steps a whole batch of environments, each
with its own parameters, as tensor operations (:class:`VectorEnv`), so thousands of
rollouts run at once on CPU or GPU. Randomness inside the environments (Bernoulli
rewards, stochastic transitions) comes from a ``torch.Generator`` the caller passes in,
so a seeded rollout is reproducible.

Every environment has a fixed horizon; one that terminates earlier (2D navigation at
the goal) stays where it is and its later steps are masked out by the rollout
(:func:`fewshot.rl.rollouts.rollout`). Observations are float vectors of
``obs_dim``; actions are ``action_dim`` floats (``action_kind == "continuous"``) or
an integer in ``0 .. action_dim-1`` (``"discrete"``). :mod:`fewshot.rl.gym` puts any
task of a family behind the Gymnasium ``Env`` API, and wraps a user's Gymnasium
environments as a family.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ..errors import ConfigError
from .rng import Source


class VectorEnv:
    """A batch of ``B`` environments of one family, environment ``b`` with task ``params[b]``.

    :meth:`reset` returns the first observations ``(B, obs_dim)``; :meth:`step` takes
    ``(B, action_dim)`` floats or ``(B,)`` integers and returns ``(obs, reward (B,),
    terminated (B,) bool)``. Truncation at the family's horizon is the caller's
    business (every environment has the same horizon).
    """

    def __init__(self, family: "EnvFamily", params: torch.Tensor, generator: Source | None = None):
        if params.ndim != 2 or params.shape[1] != family.param_dim:
            raise ConfigError(f"{family.name} tasks are vectors of {family.param_dim} numbers; "
                              f"got parameters of shape {tuple(params.shape)}")
        self.family, self.params = family, params
        # One generator, or one per block of rows (a task each, see fewshot.rl.rng).
        self.generator = generator if generator is not None else torch.Generator(device=params.device).manual_seed(0)
        self.state: torch.Tensor | None = None

    @property
    def num_envs(self) -> int:
        return self.params.shape[0]

    def reset(self) -> torch.Tensor:
        self.state = self.family.initial_state(self.params, self.generator)
        return self.family.observe(self.params, self.state)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.state is None:
            raise ConfigError("call reset() before step()")
        self.state, reward, terminated = self.family.transition(self.params, self.state, action, self.generator)
        return self.family.observe(self.params, self.state), reward, terminated


class EnvFamily:
    """A distribution over environments (see the module docstring).

    Subclasses set the class attributes and implement :meth:`sample_task`,
    :meth:`initial_state`, :meth:`observe` and :meth:`transition` on batches.
    ``obs_low`` / ``obs_high`` and ``action_low`` / ``action_high`` bound the
    spaces (Gymnasium's ``Box``); a continuous action outside them is clipped.
    """

    name: ClassVar[str] = "family"
    obs_dim: ClassVar[int]
    action_kind: ClassVar[str]  # "continuous" or "discrete"
    action_dim: int  # floats per action, or the number of discrete actions
    param_dim: int
    horizon: int
    obs_low: float = -np.inf
    obs_high: float = np.inf
    action_low: float = -np.inf
    action_high: float = np.inf

    def sample_task(self, rng: np.random.Generator) -> torch.Tensor:
        """One task's parameters, ``(param_dim,)`` float32, from ``rng`` alone."""
        raise NotImplementedError

    def initial_state(self, params: torch.Tensor, generator: Source) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, params: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transition(self, params: torch.Tensor, state: torch.Tensor, action: torch.Tensor,
                   generator: Source) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(next state, reward (B,), terminated (B,) bool)``."""
        raise NotImplementedError

    def make(self, params: torch.Tensor, generator: Source | None = None) -> VectorEnv:
        """The environments of the tasks ``params`` (``(B, param_dim)``), stepped together."""
        return VectorEnv(self, params, generator)

    def expected_returns(self, params: torch.Tensor) -> dict[str, float]:
        """Reference returns of a task known in closed form (e.g. ``random`` and
        ``optimal`` policies); empty when none is."""
        return {}

    def describe(self) -> str:
        return f"{self.name}: {self.obs_dim}-d observations, {self.action_dim} {self.action_kind} actions, horizon {self.horizon}"


__all__ = ["EnvFamily", "VectorEnv"]
