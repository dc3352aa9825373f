"""The Gymnasium ``Env`` API for task families, both ways (needs ``pip install 'fewshot[rl]'``).

* :class:`TaskEnv`: one task of a built-in family (:mod:`fewshot.rl.envs`) as a
  ``gymnasium.Env``: ``reset(seed=...)`` and ``step(action)`` returning ``(obs,
  reward, terminated, truncated, info)``, with ``Box`` / ``Discrete`` spaces. It passes
  ``gymnasium.utils.env_checker.check_env`` (tested). As Gymnasium's own
  environments, it never truncates by itself; :func:`make_env` wraps it in
  ``TimeLimit`` at the family's horizon.
* :class:`GymnasiumFamily`: a user's task family of Gymnasium environments, given as
  a function from task parameters to an environment and a function drawing task
  parameters, usable wherever a built-in family is (:func:`fewshot.rl.sampler_class`,
  ``maml-rl``). Its environments are stepped in a Python loop, one call per
  environment and step, so it is slower than the built-in tensor families
  (``benchmarks/results/rl_throughput.md``). This is how Gymnasium's MuJoCo tasks
  plug in (e.g. half-cheetah with a target velocity as the task parameter, wrapping
  ``gymnasium.make("HalfCheetah-v5")`` and replacing its reward); fewshot ships no
  MuJoCo task, since MuJoCo is not a pure-Python dependency.

Gymnasium is Farama's maintained successor of OpenAI Gym (Towers et al., 2024,
arXiv:2407.17032).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError
from .envs import EnvFamily, VectorEnv
from .rng import Source, uniform

try:
    import gymnasium
    from gymnasium import spaces
except ImportError:  # pragma: no cover - the optional extra is missing
    gymnasium = None


def _require() -> None:
    if gymnasium is None:
        raise ConfigError("the Gymnasium API needs gymnasium: pip install 'fewshot[rl]'")


def _seed_from(rng: np.random.Generator) -> int:
    return int(rng.integers(2**63 - 1))


if gymnasium is not None:
    class TaskEnv(gymnasium.Env):
        """One task (``params``) of ``family`` behind the Gymnasium ``Env`` API."""

        metadata: dict[str, Any] = {"render_modes": []}

        def __init__(self, family: EnvFamily, params: torch.Tensor):
            self.family = family
            self.params = torch.as_tensor(params, dtype=torch.float32).reshape(1, -1)
            if self.params.shape[1] != family.param_dim:
                raise ConfigError(f"{family.name} tasks are vectors of {family.param_dim} numbers, got {self.params.shape[1]}")
            self.observation_space = spaces.Box(family.obs_low, family.obs_high, (family.obs_dim,), np.float32)
            if family.action_kind == "continuous":
                self.action_space = spaces.Box(family.action_low, family.action_high, (family.action_dim,), np.float32)
            else:
                self.action_space = spaces.Discrete(family.action_dim)
            self._env: VectorEnv | None = None
            self._t = 0

        def reset(self, *, seed: int | None = None, options: dict | None = None):
            super().reset(seed=seed)
            generator = torch.Generator().manual_seed(_seed_from(self.np_random))
            self._env = self.family.make(self.params, generator)
            self._t = 0
            return self._env.reset()[0].numpy().astype(np.float32), {}

        def step(self, action):
            if self._env is None:
                raise ConfigError("call reset() before step()")
            if self.family.action_kind == "continuous":
                a = torch.as_tensor(np.asarray(action, dtype=np.float32).reshape(1, -1))
            else:
                a = torch.as_tensor(np.asarray(action, dtype=np.int64).reshape(1))
            obs, reward, terminated = self._env.step(a)
            self._t += 1
            # Truncation at the family's horizon is a wrapper's job in Gymnasium:
            # gymnasium.wrappers.TimeLimit(env, family.horizon), which make_env applies.
            return obs[0].numpy().astype(np.float32), float(reward[0]), bool(terminated[0]), False, {}

    def make_env(family: EnvFamily, params: torch.Tensor) -> "gymnasium.Env":
        """A task as a Gymnasium environment truncated at the family's horizon (``TimeLimit``)."""
        return gymnasium.wrappers.TimeLimit(TaskEnv(family, params), family.horizon)


class GymVectorEnv(VectorEnv):
    """A batch of a user's Gymnasium environments, stepped in a Python loop."""

    def __init__(self, family: "GymnasiumFamily", params: torch.Tensor, generator: Source | None = None):
        super().__init__(family, params, generator)
        self.envs = [family.make_env(row.cpu().numpy()) for row in params]

    def reset(self) -> torch.Tensor:
        # One seed per environment, from its task's generator (53 random bits of a float64).
        seeds = (uniform(self.generator, (len(self.envs),), torch.zeros((), dtype=torch.float64)) * 2**53).long().tolist()
        obs = [env.reset(seed=int(s))[0] for env, s in zip(self.envs, seeds)]
        self.state = torch.zeros(len(self.envs))
        return torch.as_tensor(np.stack(obs), dtype=self.params.dtype, device=self.params.device)

    def step(self, action: torch.Tensor):
        obs, rewards, done = [], [], []
        for env, a in zip(self.envs, action.cpu().numpy()):
            o, r, terminated, truncated, _ = env.step(a if self.family.action_kind == "continuous" else int(a))
            obs.append(o)
            rewards.append(r)
            done.append(terminated)
        dtype, device = self.params.dtype, self.params.device
        return (torch.as_tensor(np.stack(obs), dtype=dtype, device=device),
                torch.as_tensor(rewards, dtype=dtype, device=device), torch.as_tensor(done, device=device))


class GymnasiumFamily(EnvFamily):
    """A task family of Gymnasium environments (see the module docstring).

    ``make_env(params)`` builds the environment of a task (``params`` a float vector);
    ``sample_task(rng)`` draws a task's parameters from a NumPy generator; ``horizon``
    is the rollout length (an environment that terminates earlier is masked from then
    on). The spaces are read from one environment: ``Box`` observations, and ``Box``
    or ``Discrete`` actions.
    """

    def __init__(self, name: str, make_env: Callable[[np.ndarray], Any],
                 sample_task: Callable[[np.random.Generator], np.ndarray], horizon: int):
        _require()
        self.name, self.make_env, self._sample, self.horizon = name, make_env, sample_task, int(horizon)
        probe_params = np.asarray(sample_task(np.random.default_rng(0)), dtype=np.float32).reshape(-1)
        probe = make_env(probe_params)
        obs_space, act_space = probe.observation_space, probe.action_space
        if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
            raise ConfigError(f"{name}: observations must be a 1-d Box, got {obs_space}")
        self.obs_dim = int(obs_space.shape[0])
        if isinstance(act_space, spaces.Discrete):
            self.action_kind, self.action_dim = "discrete", int(act_space.n)
        elif isinstance(act_space, spaces.Box) and len(act_space.shape) == 1:
            self.action_kind, self.action_dim = "continuous", int(act_space.shape[0])
        else:
            raise ConfigError(f"{name}: actions must be Discrete or a 1-d Box, got {act_space}")
        self.param_dim = int(probe_params.shape[0])
        probe.close()

    def sample_task(self, rng: np.random.Generator) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self._sample(rng), dtype=np.float32).reshape(-1))

    def make(self, params: torch.Tensor, generator: Source | None = None) -> VectorEnv:
        return GymVectorEnv(self, params, generator)


__all__ = ["GymVectorEnv", "GymnasiumFamily", "TaskEnv", "make_env"]
