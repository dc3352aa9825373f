"""Rollouts, returns, the linear feature baseline and the REINFORCE objective.

* :func:`rollout` runs a batch of environments for the family's horizon under a
  policy, sampling actions with a ``torch.Generator`` (reproducible), and keeps a mask
  of the steps taken before each environment terminated.
* :class:`LinearFeatureBaseline` is the baseline of Duan et al. (2016, "Benchmarking
  deep reinforcement learning for continuous control", arXiv:1604.06778) that Finn et
  al. (2017, arXiv:1703.03400) use: a ridge regression of the discounted return-to-go
  on the features ``(o, o², t, t², t³, 1)`` (``t`` the step / 100), fitted on the
  rollouts it is then used for.
* :func:`policy_gradient_loss` is the REINFORCE (vanilla policy gradient, Williams
  1992) surrogate ``-mean_t,b log π(a|s) A``, averaged over the steps taken, whose
  gradient is the policy-gradient estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import TrainingError
from .envs import VectorEnv

Policy = Callable[[torch.Tensor], torch.Tensor]  # observations (B, d) -> actions


@dataclass
class Rollouts:
    """``T`` steps of ``B`` environments: ``obs (T, B, d)``, ``actions (T, B, ...)``,
    ``rewards (T, B)`` and ``mask (T, B)`` (1 for a step taken before termination)."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor

    @property
    def horizon(self) -> int:
        return self.obs.shape[0]

    @property
    def size(self) -> int:
        return self.obs.shape[1]

    def returns(self) -> torch.Tensor:
        """Undiscounted return of each rollout, ``(B,)``."""
        return (self.rewards * self.mask).sum(0)

    def steps(self) -> int:
        return int(self.mask.sum())

    def columns(self, start: int, stop: int) -> "Rollouts":
        """Rollouts ``start .. stop-1`` of the batch (one task's, in a meta-batch)."""
        return Rollouts(self.obs[:, start:stop], self.actions[:, start:stop], self.rewards[:, start:stop],
                        self.mask[:, start:stop])


@torch.no_grad()
def rollout(env: VectorEnv, policy: Policy, horizon: int) -> Rollouts:
    """Run ``env`` for ``horizon`` steps under ``policy``. An environment that has
    terminated keeps being stepped (the batch stays rectangular), but its later steps
    get mask 0 and count nowhere: not in returns, baselines or gradients."""
    obs = env.reset()
    alive = torch.ones(env.num_envs, dtype=torch.bool, device=obs.device)
    all_obs, actions, rewards, masks = [], [], [], []
    for _ in range(horizon):
        action = policy(obs)
        all_obs.append(obs)
        actions.append(action)
        masks.append(alive)
        obs, reward, terminated = env.step(action)
        rewards.append(reward)
        alive = alive & ~terminated
    rewards_t = torch.stack(rewards)
    return Rollouts(torch.stack(all_obs), torch.stack(actions), rewards_t, torch.stack(masks).to(rewards_t.dtype))


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """Return-to-go ``Σ_{k≥t} γ^(k-t) r_k`` of every step, ``(T, B)`` (masked steps count 0).

    One matrix product with the upper-triangular ``D[t, k] = γ^(k-t)`` rather than a
    Python loop over the horizon."""
    steps = rewards.shape[0]
    t = torch.arange(steps, device=rewards.device, dtype=torch.float64)
    lag = t.view(1, -1) - t.view(-1, 1)
    weights = torch.where(lag >= 0, torch.as_tensor(float(discount), dtype=torch.float64) ** lag.clamp_min(0),
                          torch.zeros((), dtype=torch.float64))
    return weights.to(rewards.dtype) @ (rewards * mask)


class LinearFeatureBaseline:
    """Ridge regression of the return-to-go on ``(o, o², t, t², t³, 1)`` (Duan et al., 2016).

    As rllab's ``LinearFeatureBaseline``: ``t`` is the step divided by 100 and the
    regularisation starts at 1e-5 and grows tenfold (up to five times) while the
    solution is not finite. Fitted in float64 on the steps taken.
    """

    def __init__(self, reg: float = 1e-5):
        self.reg = reg
        self.weights: torch.Tensor | None = None

    @staticmethod
    def features(obs: torch.Tensor) -> torch.Tensor:
        steps, batch = obs.shape[:2]
        o = obs.reshape(steps, batch, -1).double().clamp(-10, 10)
        t = (torch.arange(steps, dtype=torch.float64, device=obs.device) / 100.0).view(-1, 1, 1).expand(steps, batch, 1)
        return torch.cat([o, o * o, t, t * t, t ** 3, torch.ones_like(t)], dim=-1)

    def fit(self, rollouts: Rollouts, returns: torch.Tensor) -> "LinearFeatureBaseline":
        x = self.features(rollouts.obs)
        keep = rollouts.mask.bool()
        x, y = x[keep], returns.double()[keep]
        gram, target = x.T @ x, x.T @ y
        if not (bool(torch.isfinite(gram).all()) and bool(torch.isfinite(target).all())):
            # LAPACK's solver is undefined on NaN (MKL aborts the process): a policy whose
            # actions, observations or returns stopped being finite has diverged.
            raise TrainingError("the policy diverged: its observations or returns are no longer finite numbers; "
                                "use a smaller step size (--inner-lr) or fewer adaptation steps (--adapt-steps)")
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        reg = self.reg
        for _ in range(5):
            weights = torch.linalg.lstsq(gram + reg * eye, target.unsqueeze(-1)).solution.squeeze(-1)
            if bool(torch.isfinite(weights).all()):
                break
            reg *= 10
        self.weights = weights
        return self

    def predict(self, rollouts: Rollouts) -> torch.Tensor:
        if self.weights is None:
            raise RuntimeError("fit the baseline before predicting")
        return (self.features(rollouts.obs) @ self.weights).to(rollouts.rewards.dtype) * rollouts.mask


def advantages(rollouts: Rollouts, discount: float, baseline: bool = True, normalize: bool = True) -> torch.Tensor:
    """``A = G - b``: return-to-go minus the fitted linear feature baseline (``baseline``),
    then, with ``normalize``, centred and scaled to unit variance over the steps taken
    (rllab's ``center_adv``, on in Finn et al.'s code). Constants: no gradient flows."""
    returns = discounted_returns(rollouts.rewards, rollouts.mask, discount)
    adv = returns - LinearFeatureBaseline().fit(rollouts, returns).predict(rollouts) if baseline else returns
    if normalize:
        m = rollouts.mask
        n = m.sum().clamp_min(1)
        mean = (adv * m).sum() / n
        std = (((adv - mean) ** 2 * m).sum() / n).sqrt()
        adv = (adv - mean) / (std + 1e-8)
    return (adv * rollouts.mask).detach()


def policy_gradient_loss(log_probs: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE surrogate ``-Σ log π(a|s) A / (steps taken)``: its gradient is the
    vanilla policy-gradient estimate (Williams, 1992), averaged over the steps taken."""
    return -(log_probs * adv * mask).sum() / mask.sum().clamp_min(1)


__all__ = ["LinearFeatureBaseline", "Policy", "Rollouts", "advantages", "discounted_returns", "policy_gradient_loss",
           "rollout"]
