"""Action distributions of MLP policies: Gaussian for continuous actions, categorical for discrete.

The policy network (any module, e.g. fewshot's ``MLP``) maps observations to a vector:
the mean of a Gaussian with a state-independent, learned log standard deviation per
action dimension (Finn et al., 2017, arXiv:1703.03400, section 5.3, following rllab),
or the logits of a categorical distribution. Sampling draws its noise from a
``torch.Generator`` (or one per task, :mod:`fewshot.rl.rng`), so rollouts are
reproducible.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from .rng import Source, normal, uniform

KINDS = {"continuous": "gaussian", "discrete": "categorical"}
#: The policy distributions a meta-RL method can be built with.
POLICIES = tuple(KINDS.values())


def check_policy_method(method: str, task: str, tasks, policy: str | None, example: str) -> None:
    """Refuse, in one line, a meta-RL method built for other data than environment families, or
    without its policy distribution (which training on a family sets): the checks every
    policy-learning method (maml-rl, rl2) makes first."""
    if task not in tasks:
        raise ConfigError(f"{method} learns policies on environment families, not {task} data; train it with "
                          f"--env (see `fewshot data list`), e.g. --env {example}")
    if policy is None:
        raise ConfigError(f"{method} needs a policy, one of {', '.join(POLICIES)} (training on an environment "
                          "family sets it)")


def log_prob(kind: str, out: torch.Tensor, log_std: torch.Tensor | None, actions: torch.Tensor) -> torch.Tensor:
    """``log π(a|s)`` of ``actions`` under the distribution the network output ``out`` gives (batch shape kept)."""
    if kind == "gaussian":
        z = (actions - out) / log_std.exp()
        return (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return torch.log_softmax(out, dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def sample(kind: str, out: torch.Tensor, log_std: torch.Tensor | None, generator: Source) -> torch.Tensor:
    """Actions drawn from the distribution of network output ``out``, noise from ``generator``."""
    if kind == "gaussian":
        noise = normal(generator, out.shape, out)
        return out + log_std.exp() * noise
    # Inverse-CDF sampling: one uniform per row, the first category whose cumulative probability exceeds it.
    cdf = torch.softmax(out, dim=-1).cumsum(-1)
    u = uniform(generator, out.shape[:-1] + (1,), out)
    return (cdf < u).sum(-1).clamp_max(out.shape[-1] - 1)


def kl_divergence(kind: str, old: torch.Tensor, old_log_std: torch.Tensor | None, out: torch.Tensor,
                  log_std: torch.Tensor | None) -> torch.Tensor:
    """``KL(π_old(·|s) || π(·|s))`` per row, from the two networks' outputs (TRPO's constraint)."""
    if kind == "gaussian":
        var, old_var = (2 * log_std).exp(), (2 * old_log_std).exp()
        return (log_std - old_log_std + (old_var + (old - out) ** 2) / (2 * var) - 0.5).sum(-1)
    old_logp = torch.log_softmax(old, dim=-1)
    return (old_logp.exp() * (old_logp - torch.log_softmax(out, dim=-1))).sum(-1)


def entropy(kind: str, out: torch.Tensor, log_std: torch.Tensor | None) -> torch.Tensor:
    """Entropy per row (a diagnostic)."""
    if kind == "gaussian":
        return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1).expand(out.shape[:-1])
    logp = torch.log_softmax(out, dim=-1)
    return -(logp.exp() * logp).sum(-1)


__all__ = ["KINDS", "POLICIES", "check_policy_method", "entropy", "kl_divergence", "log_prob", "sample"]
