"""RL²: a recurrent policy that learns a task within its memory (Duan et al., 2016,
arXiv:1611.02779; Wang et al., 2016, "Learning to reinforcement learn", arXiv:1611.05763): ``rl2``.

The policy is a GRU (:class:`fewshot.rl.recurrent.GRUPolicy`) fed the observation, the
previous action, the previous reward and a new-episode flag; its hidden state carries
over the ``episodes_per_trial`` episodes of a trial of one task and is reset to zero
between trials, so "adapting" is the forward pass: nothing is fine-tuned at test time.
It is the memory-based counterpart of ``maml-rl`` (as MANN is of MAML in the supervised
table) and runs on the same environment families and seeded task suites.

**Training**: proximal policy optimisation (Schulman et al., 2017, arXiv:1707.06347;
Duan et al. used TRPO) across tasks. Each trainer step rolls out ``shot`` trials of every
task of the meta-batch, computes generalised advantages over each trial as one episode
of the meta-MDP (``discount``, ``gae_lambda``; :func:`fewshot.rl.recurrent.gae`), and
takes ``ppo_epochs`` full-batch Adam steps (rate ``ppo_lr``, gradient norm clipped at
``max_grad_norm``) on the clipped surrogate (``clip``) plus ``value_coef`` times the
value loss minus ``entropy_coef`` times the entropy, backpropagating through the whole
trial. Several optimiser steps per batch of rollouts is what makes the clipping act, and
the trainer takes one step per batch: so the method computes the update itself and
declares ``own_step`` (:mod:`fewshot.methods.base`), and the trainer applies it as given.
PPO's Adam moments are buffers of the module, saved with every checkpoint, so a resumed
run is the uninterrupted one. Split over processes (``--nproc``), each process's moments
would follow its own share, so RL² refuses to train in more than one process.

**Evaluation** (:meth:`RL2.adapt_returns`): ``shot`` trials of the task from a zero
hidden state; the mean return of each episode of the trial (episode 1, 2, ...). The
score is the last episode's. ``--adapt-steps K`` (``set_test_options(inner_steps=K)``)
evaluates trials of ``K + 1`` episodes.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..models.inner_loop import surrogate_loss
from ..params import Integer, OneOf, Optional, Real
from ..rl.policies import POLICIES, check_policy_method, entropy, log_prob
from ..rl.recurrent import GRUPolicy, Trials, gae, trial_rollout
from ..rl.rng import Generators
from ..rl.tasks import RLTask
from .base import Method, register

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@register
class RL2(Method):
    """RL² trained with PPO (see the module docstring). The backbone the family implies
    only tells the number of action values (its output width); the GRU replaces it."""

    name = "rl2"
    tasks = ("reinforcement",)
    task = "reinforcement"
    own_step = True
    _parameter_constraints = {
        "policy": Optional(OneOf(*POLICIES)), "hidden_size": Integer(low=1, high=4096),
        "episodes_per_trial": Integer(low=1, high=10000), "test_episodes": Optional(Integer(low=1, high=10000)),
        "discount": Real(low=0, high=1), "gae_lambda": Real(low=0, high=1), "clip": Real(low=0, open_low=True),
        "ppo_epochs": Integer(low=1, high=1000), "ppo_lr": Real(low=0, open_low=True),
        "value_coef": Real(low=0), "entropy_coef": Real(low=0), "max_grad_norm": Real(low=0, open_low=True),
        "init_std": Real(low=0, open_low=True), "task": OneOf("reinforcement")}

    def __init__(self, backbone: nn.Module, policy: str | None = None, hidden_size: int = 64,
                 episodes_per_trial: int = 2, test_episodes: int | None = None, discount: float = 0.99,
                 gae_lambda: float = 0.95, clip: float = 0.2, ppo_epochs: int = 4, ppo_lr: float = 1e-3,
                 value_coef: float = 0.5, entropy_coef: float = 0.0, max_grad_norm: float = 1.0,
                 init_std: float = 1.0, task: str = "reinforcement", image_shape: Sequence[int] | None = None):
        check_policy_method("rl2", task, self.tasks, policy, "bandit-5")
        if backbone is None or image_shape is None:
            raise ConfigError("rl2 needs the family's policy network and observation shape (train it with --env)")
        shape = tuple(image_shape)
        with torch.no_grad():
            actions = backbone(torch.zeros(2, *shape, dtype=next(backbone.parameters()).dtype)).shape[-1]
        super().__init__(None)  # the GRU is the whole policy
        self.policy, self.hidden_size, self.episodes_per_trial = policy, int(hidden_size), int(episodes_per_trial)
        self.test_episodes = None if test_episodes is None else int(test_episodes)
        self.discount, self.gae_lambda, self.clip = float(discount), float(gae_lambda), float(clip)
        self.ppo_epochs, self.ppo_lr, self.max_grad_norm = int(ppo_epochs), float(ppo_lr), float(max_grad_norm)
        self.value_coef, self.entropy_coef, self.init_std = float(value_coef), float(entropy_coef), float(init_std)
        self.net = GRUPolicy(math.prod(shape), actions, policy, self.hidden_size, self.init_std)
        for i, p in enumerate(self.net.parameters()):  # PPO's Adam moments: checkpointed with the weights
            self.register_buffer(f"adam_m{i}", torch.zeros_like(p))
            self.register_buffer(f"adam_v{i}", torch.zeros_like(p))
        self.register_buffer("adam_t", torch.zeros((), dtype=torch.float64))

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor):
        return self.net.step(inputs, hidden)

    def set_test_options(self, inner_steps: int | None = None, **options) -> None:
        """``inner_steps=K``: evaluate trials of ``K + 1`` episodes (``fewshot evaluate --adapt-steps K``)."""
        if options:
            raise ConfigError(f"rl2 takes no test-time option {', '.join(sorted(options))}; it takes inner_steps "
                              "(episodes of a trial after the first)")
        if inner_steps is not None:
            if isinstance(inner_steps, bool) or not isinstance(inner_steps, (int, np.integer)) or inner_steps < 0:
                raise ConfigError(f"rl2 inner_steps must be a non-negative integer, got {inner_steps!r}")
            self.test_episodes = int(inner_steps) + 1

    # -- rollouts and the PPO objective ---------------------------------------------------

    def sample_trials(self, tasks: Sequence[RLTask], count: int, episodes: int) -> list[Trials]:
        """``count`` trials of ``episodes`` episodes of each task, all stepped together; task
        ``m`` draws its noise from its own generator (:mod:`fewshot.rl.rng`)."""
        family = tasks[0].family
        if any(t.family is not family for t in tasks):
            raise ConfigError("a meta-batch of rl2 must hold tasks of one environment family")
        generators = [t.generator() for t in tasks]
        source = generators[0] if len(tasks) == 1 else Generators(generators, [count] * len(tasks))
        rows = torch.cat([t.params.unsqueeze(0).expand(count, -1) for t in tasks])
        trials = trial_rollout(self.net, family.make(rows, source), episodes, family.horizon, source)
        return [Trials(trials.inputs[:, i * count:(i + 1) * count], trials.actions[:, i * count:(i + 1) * count],
                       trials.rewards[:, i * count:(i + 1) * count], trials.mask[:, i * count:(i + 1) * count],
                       episodes) for i in range(len(tasks))]

    def ppo_loss(self, trials: Trials, old_logp: torch.Tensor, adv: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Clipped surrogate + value loss - entropy bonus, averaged over the steps taken."""
        out, values = self.net.unroll(trials.inputs, trials.mask)
        logp = log_prob(self.policy, out, self.net.log_std, trials.actions)
        ratio = (logp - old_logp).exp()
        surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - self.clip, 1 + self.clip) * adv)
        m, n = trials.mask, trials.mask.sum().clamp_min(1)
        loss = -(surrogate * m).sum() / n + self.value_coef * (((values - targets) ** 2) * m).sum() / n
        if self.entropy_coef:
            loss = loss - self.entropy_coef * (entropy(self.policy, out, self.net.log_std) * m).sum() / n
        return loss

    def _adam(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """One Adam step (Kingma & Ba, 2015, arXiv:1412.6980) in place, moments in the buffers."""
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        scale = min(1.0, self.max_grad_norm / (float(norm) + 1e-6))
        self.adam_t += 1
        t = float(self.adam_t)
        (b1, b2), lr = ADAM_BETAS, self.ppo_lr * math.sqrt(1 - ADAM_BETAS[1] ** t) / (1 - ADAM_BETAS[0] ** t)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                g = g * scale
                m, v = getattr(self, f"adam_m{i}"), getattr(self, f"adam_v{i}")
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.addcdiv_(m, v.sqrt().add_(ADAM_EPS), value=-lr)

    def loss(self, episodes: Sequence[RLTask]) -> tuple[torch.Tensor, dict[str, float]]:
        """The PPO update of one meta-batch, handed to the trainer as the gradient ``-step``.

        Metrics: ``return`` (mean return of the trials' last episode) and ``return_first``
        (of their first)."""
        if not episodes:
            raise ConfigError("rl2.loss needs at least one task")
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise ConfigError("rl2 keeps PPO's optimiser state in the model, which processes would each change "
                              "their own way: train it in one process (--nproc 1)")
        parts = self.sample_trials(episodes, episodes[0].shot, self.episodes_per_trial)
        trials = Trials(*(torch.cat([getattr(p, k) for p in parts], dim=1) for k in ("inputs", "actions", "rewards",
                                                                                      "mask")), parts[0].episodes)
        per_episode = trials.episode_returns().mean(1)
        metrics = {"return": float(per_episode[-1]), "return_first": float(per_episode[0])}
        params = list(self.net.parameters())
        with torch.no_grad():
            out, values = self.net.unroll(trials.inputs, trials.mask)
            old_logp = log_prob(self.policy, out, self.net.log_std, trials.actions)
            adv = gae(trials.rewards * trials.mask, values, trials.mask, self.discount, self.gae_lambda)
            targets = adv + values
            m, n = trials.mask, trials.mask.sum().clamp_min(1)
            mean = (adv * m).sum() / n
            adv = (adv - mean) / ((((adv - mean) ** 2 * m).sum() / n).sqrt() + 1e-8) * m
        if not torch.is_grad_enabled():
            return self.ppo_loss(trials, old_logp, adv, targets), metrics
        start = [p.detach().clone() for p in params]
        value = None
        for _ in range(self.ppo_epochs):
            loss = self.ppo_loss(trials, old_logp, adv, targets)
            grads = torch.autograd.grad(loss, params)
            value = loss.detach() if value is None else value
            self._adam(params, list(grads))
        with torch.no_grad():
            steps = [p.detach() - s for p, s in zip(params, start)]
            for p, s in zip(params, start):
                p.copy_(s)  # the trainer applies the step (own_step): the weights are as they were
        return surrogate_loss(value, params, [-s for s in steps]), metrics

    # -- evaluation --------------------------------------------------------------------------

    def adapt_returns(self, task: RLTask, steps: int | None = None) -> np.ndarray:
        """Mean return of each episode of ``task.shot`` trials (``(episodes,)``): trials of
        ``steps + 1`` episodes if given, else of ``test_episodes`` (default: the training trials')."""
        episodes = (steps + 1 if steps is not None else self.test_episodes or self.episodes_per_trial)
        with torch.no_grad():
            (trials,) = self.sample_trials([task], task.shot, episodes)
        return trials.episode_returns().mean(1).double().numpy()

    def adapt(self, support_x, support_y, way):
        raise ConfigError("rl2 adapts to environments within a trial, not to labelled support sets; evaluate it on "
                          "an environment family (fewshot evaluate RUN)")


__all__ = ["RL2"]
