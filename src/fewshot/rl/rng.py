"""Random numbers for rollouts: one ``torch.Generator``, or one per task of a batch.

A meta-batch's rollouts run as one batch of environments, but each task draws its
noise (action sampling, stochastic rewards and transitions) from its own generator,
in the same order as if it ran alone: :class:`Generators` gives rows ``0 .. n0-1``
numbers from the first generator, the next ``n1`` rows from the second, and so on. A
task's rollouts therefore depend only on the task and the policy, not on which other
tasks share the batch (or the process, when the meta-batch is split over processes).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch


class Generators:
    """Generators for consecutive blocks of rows: ``sizes[m]`` rows from ``generators[m]``."""

    def __init__(self, generators: Sequence[torch.Generator], sizes: Sequence[int]):
        if len(generators) != len(sizes):
            raise ValueError("one size per generator")
        self.generators, self.sizes = list(generators), [int(s) for s in sizes]

    @property
    def rows(self) -> int:
        return sum(self.sizes)


Source = Union[torch.Generator, Generators]


def _draw(fn, source: Source, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    kwargs = {"dtype": like.dtype if like.is_floating_point() else torch.get_default_dtype(), "device": like.device}
    if isinstance(source, Generators):
        if shape[0] != source.rows:
            raise ValueError(f"{shape[0]} rows asked of generators for {source.rows}")
        return torch.cat([fn((n, *shape[1:]), generator=g, **kwargs) for g, n in zip(source.generators, source.sizes)])
    return fn(shape, generator=source, **kwargs)


def uniform(source: Source, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) numbers of ``shape`` (rows first) in ``like``'s dtype and device."""
    return _draw(torch.rand, source, tuple(shape), like)


def normal(source: Source, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Standard normal numbers of ``shape`` (rows first) in ``like``'s dtype and device."""
    return _draw(torch.randn, source, tuple(shape), like)


__all__ = ["Generators", "Source", "normal", "uniform"]
