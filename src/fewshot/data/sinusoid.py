"""Sinusoid regression, the toy task family of MAML (Finn, Abbeel & Levine, 2017, Section 5.1).

Each task is ``y = A · sin(x − φ)`` with amplitude ``A ~ U[0.1, 5]`` and phase
``φ ~ U[0, π]``; inputs are ``x ~ U[−5, 5]``. A task is an :class:`Episode` with
``way=1``: ``shot`` support points and ``query`` query points, all ``(n, 1)`` float32.

As with :class:`~fewshot.data.episodes.EpisodeSampler`, episode ``i`` depends only on
``(seed, split, i, shot, query)``; its amplitude and phase depend only on
``(seed, split, i)``, so the same task index gives the same function whatever the shot
count. The family has no classes to divide, so its ``train``, ``val`` and ``test``
splits are disjoint random streams: the split enters the seed of every episode
(``train``, the default, draws the stream of ``SinusoidSampler(shot, query, seed)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..errors import ConfigError
from ..params import SAMPLER_OPTIONS, validate
from .episodes import Episode

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)
# The word each split adds to an episode's seed. "train" adds none, so the training
# stream is the one this sampler always drew; the others end in a non-zero word, which
# numpy's SeedSequence cannot confuse with a shorter seed.
SPLITS = {"train": (), "val": (1,), "test": (2,)}


@dataclass(frozen=True)
class SinusoidTask:
    """One sinusoid, ``y = amplitude · sin(x − phase)``."""

    amplitude: float
    phase: float

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        sin = torch.sin if isinstance(x, torch.Tensor) else np.sin
        return self.amplitude * sin(x - self.phase)


class SinusoidSampler:
    """Draws sinusoid regression episodes: ``shot`` support and ``query`` query points
    from the tasks of ``split`` (``train``, ``val`` or ``test``)."""

    #: What the trainer and :func:`~fewshot.evaluate.evaluate` read: episodes are
    #: regression tasks on inputs of this shape (one scalar per point).
    kind = "regression"
    input_shape = (1,)
    splits = tuple(SPLITS)

    _parameter_constraints = SAMPLER_OPTIONS

    def __init__(self, shot: int, query: int, seed: int = 0, split: str | None = "train",
                 device: torch.device | str | None = None):
        split = "train" if split is None else split
        if split not in SPLITS:
            raise ConfigError(f"sinusoid has no split '{split}'; its splits are: {', '.join(SPLITS)}")
        validate("sinusoid", {"shot": shot, "query": query, "seed": seed}, self._parameter_constraints)
        self.shot, self.query, self.seed, self.split = int(shot), int(query), int(seed), split
        self.way = 1
        # Points are drawn on the host (so every device sees the same tasks) and moved:
        # a task is (shot + query) x 2 floats, nothing to keep on the device beforehand.
        self.device = torch.device("cpu") if device is None else torch.device(device)

    def on(self, device: torch.device | str | None) -> "SinusoidSampler":
        """This sampler on ``device``: the same tasks, their points moved there."""
        device = torch.device("cpu") if device is None else torch.device(device)
        if device == self.device:
            return self
        return SinusoidSampler(self.shot, self.query, self.seed, self.split, device=device)

    def __repr__(self) -> str:
        return f"SinusoidSampler({self.split}, {self.shot}-shot {self.query}-query, seed={self.seed})"

    def _rng(self, i: int) -> np.random.Generator:
        if i < 0:
            raise ConfigError(f"episode index must be non-negative, got {i}")
        return np.random.default_rng((self.seed, int(i), *SPLITS[self.split]))

    @staticmethod
    def _draw_task(rng: np.random.Generator) -> SinusoidTask:
        # Drawn before the inputs so that a task does not depend on shot and query.
        return SinusoidTask(float(rng.uniform(*AMPLITUDE)), float(rng.uniform(*PHASE)))

    def task(self, i: int) -> SinusoidTask:
        """The amplitude and phase of episode ``i``."""
        return self._draw_task(self._rng(i))

    def episode(self, i: int) -> Episode:
        rng = self._rng(i)
        task = self._draw_task(rng)
        x = rng.uniform(*X_RANGE, size=(self.shot + self.query, 1))
        x_t = torch.from_numpy(x.astype(np.float32)).to(self.device)
        y_t = torch.from_numpy(task(x).astype(np.float32)).to(self.device)
        return Episode(
            support_x=x_t[: self.shot],
            support_y=y_t[: self.shot],
            query_x=x_t[self.shot :],
            query_y=y_t[self.shot :],
            way=1,
            shot=self.shot,
        )

    def batch(self, step: int, size: int) -> list[Episode]:
        """The meta-batch of training step ``step``: episodes ``step*size .. step*size+size-1``."""
        return [self.episode(step * size + j) for j in range(size)]

    def suite(self, count: int) -> Iterator[Episode]:
        """Episodes ``0 .. count-1``: a fixed evaluation suite."""
        return (self.episode(i) for i in range(count))
