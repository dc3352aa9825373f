"""Recurrent policies whose memory spans a trial of episodes (RL², Duan et al., 2016,
arXiv:1611.02779; Wang et al., 2016, arXiv:1611.05763), their rollouts and GAE.

A *trial* is ``episodes`` consecutive episodes of one task. The policy is a GRU
(:class:`GRUPolicy`) whose input at each step is the observation, the previous action
(one-hot for discrete actions), the previous reward and a flag that is 1 on the first
step of every episode after the first (Duan et al.'s "termination flag"); its hidden
state starts at zero at the beginning of a trial and is **kept across the episodes of
the trial**, so what it learnt about the task in one episode is there in the next.
After an episode has terminated early (2D navigation at the goal) its remaining steps
are masked: the hidden state and the previous action and reward are frozen on them.

:func:`trial_rollout` runs a batch of trials and records every step's GRU input;
:meth:`GRUPolicy.unroll` replays those inputs differentiably (backpropagation through
the whole trial); :func:`gae` gives generalised advantage estimates (Schulman et al.,
2016, arXiv:1506.02438) over the trial as one episode of the meta-MDP, skipping
masked steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .envs import VectorEnv
from .policies import sample
from .rng import Source


class GRUPolicy(nn.Module):
    """A GRU over ``(observation, previous action, previous reward, new-episode flag)``
    with a policy head (categorical logits, or a Gaussian mean with a learned
    state-independent log standard deviation) and a value head."""

    def __init__(self, obs_dim: int, action_dim: int, kind: str, hidden_size: int = 64, init_std: float = 1.0):
        super().__init__()
        self.obs_dim, self.action_dim, self.kind, self.hidden_size = int(obs_dim), int(action_dim), kind, int(hidden_size)
        self.input_size = self.obs_dim + self.action_dim + 2
        self.cell = nn.GRUCell(self.input_size, self.hidden_size)
        self.policy_head = nn.Linear(self.hidden_size, self.action_dim)
        self.value_head = nn.Linear(self.hidden_size, 1)
        self.log_std = (nn.Parameter(torch.full((self.action_dim,), float(init_std)).log())
                        if kind == "gaussian" else None)

    def initial_state(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """The hidden state at the start of a trial: zeros."""
        return torch.zeros(batch, self.hidden_size, dtype=like.dtype, device=like.device)

    def encode_action(self, action: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.kind == "categorical":
            return F.one_hot(action.long(), self.action_dim).to(dtype)
        return action.to(dtype).view(action.shape[0], self.action_dim)

    def step(self, inputs: torch.Tensor, hidden: torch.Tensor):
        """``(policy output, value, new hidden state)`` of one step."""
        hidden = self.cell(inputs, hidden)
        return self.policy_head(hidden), self.value_head(hidden).squeeze(-1), hidden

    def unroll(self, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy outputs ``(T, B, A)`` and values ``(T, B)`` of recorded trials, from a zero
        hidden state, frozen on masked steps as in :func:`trial_rollout`."""
        hidden = self.initial_state(inputs.shape[1], inputs)
        outs, values = [], []
        for t in range(inputs.shape[0]):
            out, value, new = self.step(inputs[t], hidden)
            hidden = torch.where(mask[t].bool().unsqueeze(-1), new, hidden)
            outs.append(out)
            values.append(value)
        return torch.stack(outs), torch.stack(values)


@dataclass
class Trials:
    """``T = episodes * horizon`` steps of ``B`` trials: the GRU ``inputs (T, B, in)``, the
    ``actions``, ``rewards (T, B)``, ``mask (T, B)`` (1 for a step taken before its episode
    terminated) and ``episodes`` (how many episodes a trial has)."""

    inputs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    episodes: int

    def episode_returns(self) -> torch.Tensor:
        """Undiscounted return of each episode of each trial, ``(episodes, B)``."""
        steps = self.rewards.shape[0] // self.episodes
        return (self.rewards * self.mask).view(self.episodes, steps, -1).sum(1)


@torch.no_grad()
def trial_rollout(policy: GRUPolicy, env: VectorEnv, episodes: int, horizon: int, generator: Source) -> Trials:
    """Run ``env.num_envs`` trials of ``episodes`` episodes under ``policy`` (see the module docstring)."""
    obs = env.reset()
    batch = obs.shape[0]
    dtype = policy.policy_head.weight.dtype
    hidden = policy.initial_state(batch, policy.policy_head.weight)  # reset: a new trial
    prev_action = torch.zeros(batch, policy.action_dim, dtype=dtype)
    prev_reward = torch.zeros(batch, 1, dtype=dtype)
    inputs, actions, rewards, masks = [], [], [], []
    for episode in range(episodes):
        if episode:
            obs = env.reset()  # a new episode of the same task; the hidden state is kept
        alive = torch.ones(batch, dtype=torch.bool)
        for t in range(horizon):
            flag = torch.full((batch, 1), float(episode > 0 and t == 0), dtype=dtype)
            x = torch.cat([obs.to(dtype), prev_action, prev_reward, flag], dim=-1)
            out, _, new = policy.step(x, hidden)
            hidden = torch.where(alive.unsqueeze(-1), new, hidden)
            action = sample(policy.kind, out, policy.log_std, generator)
            obs, reward, terminated = env.step(action)
            inputs.append(x)
            actions.append(action)
            rewards.append(reward.to(dtype))
            masks.append(alive.to(dtype))
            keep = alive.unsqueeze(-1)
            prev_action = torch.where(keep, policy.encode_action(action, dtype), prev_action)
            prev_reward = torch.where(keep, reward.to(dtype).unsqueeze(-1), prev_reward)
            alive = alive & ~terminated
    return Trials(torch.stack(inputs), torch.stack(actions), torch.stack(rewards), torch.stack(masks), episodes)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, discount: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates ``(T, B)`` over a whole trial (one episode of the
    meta-MDP, ending after its last step); masked steps are skipped: they get 0 and pass
    the next live step's value and advantage through."""
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[0])
    next_adv = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        live = mask[t].bool()
        delta = rewards[t] + discount * next_value - values[t]
        here = delta + discount * lam * next_adv
        adv[t] = torch.where(live, here, torch.zeros_like(here))
        next_value = torch.where(live, values[t], next_value)
        next_adv = torch.where(live, here, next_adv)
    return adv


__all__ = ["GRUPolicy", "Trials", "gae", "trial_rollout"]
