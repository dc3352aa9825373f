"""Seeded task suites of environment families: what the trainer and evaluation sample.

:class:`EnvTaskSampler` is to an environment family what
:class:`~fewshot.data.sinusoid.SinusoidSampler` is to sinusoids: task ``i`` of a
split (an :class:`RLTask`: the family, the task's parameters and the seed of its
rollouts) depends only on ``(seed, split, i)``, the splits ``train`` / ``val`` /
``test`` are disjoint random streams, ``batch(step, n)`` is the meta-batch of a
training step and ``suite(n)`` a fixed evaluation suite. ``shot`` is the number of
rollouts per adaptation step (K in Finn et al., 2017, arXiv:1703.03400) and ``query``
the number of fresh rollouts the outer objective uses; ``kind = "reinforcement"``.

:data:`ENV_FAMILIES` holds the built-in families; :func:`sampler_class` makes the
sampler class of any family (a user's, e.g. :class:`fewshot.rl.gym.GymnasiumFamily`),
which :data:`fewshot.data.tasks.TASK_FAMILIES` registers by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterator

import numpy as np
import torch

from ..errors import ConfigError
from ..params import SAMPLER_OPTIONS, validate
from .bandit import BernoulliBandit
from .envs import EnvFamily, VectorEnv
from .mdp import TabularMDP
from .navigation import Navigation2D
from .policies import KINDS

# As for sinusoids: "train" adds no word to the seed, the others a non-zero one.
SPLITS = {"train": (), "val": (1,), "test": (2,)}
#: Finn et al.'s policy for 2D navigation: two hidden layers of 100 ReLU units.
HIDDEN = [100, 100]


@dataclass(frozen=True, eq=False)
class RLTask:
    """One task of a family: its parameters and the seed of every rollout drawn for it.

    ``shot`` rollouts per adaptation step, ``query`` rollouts for the outer objective.
    ``generator()`` gives a fresh ``torch.Generator`` in the same state every call, so
    the rollouts of a task depend only on it and the policy.
    """

    family: EnvFamily = field(repr=False)
    params: torch.Tensor = field(repr=False)
    rollout_seed: int
    shot: int
    query: int
    index: int = 0
    way: int = 1

    def generator(self) -> torch.Generator:
        return torch.Generator(device=self.params.device).manual_seed(self.rollout_seed)

    def envs(self, count: int, generator: torch.Generator) -> VectorEnv:
        """``count`` copies of this task's environment, stepped together."""
        return self.family.make(self.params.unsqueeze(0).expand(count, -1), generator)


class EnvTaskSampler:
    """Tasks of ``family`` (a class attribute: one subclass per family, see
    :func:`sampler_class`); see the module docstring."""

    kind: ClassVar[str] = "reinforcement"
    family: ClassVar[EnvFamily]
    input_shape: ClassVar[tuple[int, ...]]
    splits: ClassVar[tuple[str, ...]] = tuple(SPLITS)
    #: Backbone options the family implies (a policy MLP with one output per action value).
    backbone_defaults: ClassVar[dict]
    #: Method options the family implies (the policy's distribution).
    method_defaults: ClassVar[dict]

    _parameter_constraints = SAMPLER_OPTIONS  # shot: rollouts per adaptation step; query: for the outer objective

    def __init__(self, shot: int, query: int, seed: int = 0, split: str | None = "train"):
        split = "train" if split is None else split
        if split not in SPLITS:
            raise ConfigError(f"{self.family.name} has no split '{split}'; its splits are: {', '.join(SPLITS)}")
        validate(self.family.name, {"rollouts": shot, "query rollouts": query, "seed": seed},
                 {"rollouts": SAMPLER_OPTIONS["shot"], "query rollouts": SAMPLER_OPTIONS["query"],
                  "seed": SAMPLER_OPTIONS["seed"]})
        self.shot, self.query, self.seed, self.split = int(shot), int(query), int(seed), split
        self.way = 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.family.name}, {self.split}, {self.shot} rollouts, seed={self.seed})"

    def episode(self, i: int) -> RLTask:
        if i < 0:
            raise ConfigError(f"task index must be non-negative, got {i}")
        rng = np.random.default_rng((self.seed, int(i), *SPLITS[self.split]))
        params = self.family.sample_task(rng)  # drawn first: a task does not depend on the rollout counts
        return RLTask(self.family, params, int(rng.integers(2**63 - 1)), self.shot, self.query, int(i))

    task = episode

    def batch(self, step: int, size: int) -> list[RLTask]:
        """The meta-batch of training step ``step``: tasks ``step*size .. step*size+size-1``."""
        return [self.episode(step * size + j) for j in range(size)]

    def suite(self, count: int) -> Iterator[RLTask]:
        """Tasks ``0 .. count-1``: a fixed evaluation suite."""
        return (self.episode(i) for i in range(count))


def sampler_class(family: EnvFamily, hidden: list[int] | None = None) -> type[EnvTaskSampler]:
    """The sampler class of ``family``: ``cls(shot, query, seed, split)`` draws its tasks."""
    if family.action_kind not in KINDS:
        raise ConfigError(f"{family.name}: action_kind must be one of {', '.join(KINDS)}, got {family.action_kind!r}")
    name = "".join(part.capitalize() for part in family.name.replace("_", "-").split("-")) + "Sampler"
    return type(name, (EnvTaskSampler,), {
        "family": family, "input_shape": (family.obs_dim,),
        "backbone_defaults": {"mlp": {"hidden": list(hidden or HIDDEN), "out_features": family.action_dim}},
        "method_defaults": {"policy": KINDS[family.action_kind]},
        # `fewshot data list` describes a family by the first line of its module's docstring.
        "__module__": type(family).__module__,
        "__doc__": f"Tasks of {family.name} (see :class:`EnvTaskSampler`).",
    })


#: The built-in families, by the name `--env` / `--dataset` takes.
ENV_FAMILIES: dict[str, EnvFamily] = {
    f.name: f for f in (Navigation2D(), BernoulliBandit(5), BernoulliBandit(10), TabularMDP())
}

__all__ = ["ENV_FAMILIES", "EnvTaskSampler", "RLTask", "SPLITS", "sampler_class"]
