"""N-way K-shot episodes, sampled so that episode ``i`` of a suite is always the same.

Episode ``i`` depends only on (dataset, split, way, shot, query, seed, i): its random
generator is seeded with ``(seed, i)``. Every method evaluated on a suite therefore sees
identical tasks, and a training run resumed at step ``s`` draws exactly the episodes it
would have drawn without the interruption.

**Devices.** A sampler made with ``device=`` (or :meth:`EpisodeSampler.on`) gathers its
episodes on that device from the dataset's one copy there
(:meth:`~fewshot.data.base.ClassDataset.images_on`): only the few image indices of an
episode cross from the host, never images. The indices are drawn on the host by
NumPy's generator, so episode ``i`` is the same on every device.

**Within one group.** With ``within_groups=True`` every episode's classes come from one
group of the dataset's ``class_groups`` (Omniglot: one alphabet), as in Lake et al.'s
20-way within-alphabet one-shot classification (Lake, Salakhutdinov and Tenenbaum,
Science 2015; no arXiv version): episode ``i`` first picks a group, uniformly among
the groups of the split with at least ``way`` classes, from the same ``(seed, i)``
generator, then ``way`` classes of it. Episodes across groups (the default) are drawn
exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .base import ClassDataset, to_float_images


@dataclass
class Episode:
    """One few-shot task. Labels are remapped to ``0 .. way-1``.

    Support examples come class by class (``shot`` of class 0, then class 1, ...), so
    ``support_x.view(way, shot, ...)`` groups them by class.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    way: int
    shot: int
    classes: tuple[int, ...] = ()
    #: The source domain it comes from, in a multi-domain dataset (fewshot.data.domains); else "".
    domain: str = ""


class EpisodeSampler:
    """Draws N-way K-shot Q-query episodes from the classes of one split.

    Impossible requests fail here, at construction, with a message naming the problem.
    """

    #: Episodes are classification tasks (scored by accuracy); see :mod:`fewshot.data.tasks`.
    kind = "classification"

    def __init__(self, dataset: ClassDataset, split: str | None, way: int, shot: int, query: int, seed: int = 0,
                 device: torch.device | str | None = None, within_groups: bool = False):
        for name, value in (("way", way), ("shot", shot), ("query", query)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if way < 2:
            raise ConfigError(f"way must be at least 2: an episode of {way} class asks nothing; use --way 2 or more")
        self.dataset, self.split = dataset, split
        self.way, self.shot, self.query, self.seed = int(way), int(shot), int(query), int(seed)
        self.classes = np.asarray(dataset.split_classes(split), dtype=np.int64)
        split_name = split or "all"
        if way > len(self.classes):
            raise DataError(
                f"{way}-way episodes need {way} classes, but {dataset.name} split '{split_name}' has {len(self.classes)}"
            )
        counts = dataset.class_counts[self.classes]
        need = shot + query
        if counts.min() < need:
            small = int(self.classes[int(np.argmin(counts))])
            raise DataError(
                f"class '{dataset.class_names[small]}' of {dataset.name} has {int(counts.min())} images; "
                f"{shot}-shot {query}-query needs {need}"
            )
        if not isinstance(within_groups, (bool, np.bool_)):
            raise ConfigError(f"within_groups must be true or false, got {within_groups!r}")
        self.within_groups = bool(within_groups)
        self._groups = self._group_positions(split_name) if self.within_groups else []
        self._counts = counts
        self._offsets = dataset.class_offsets[self.classes]
        self._positions = np.arange(int(counts.max()))
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self._images = dataset.images_on(self.device)
        # Labels are the same for every episode: class-major, 0 .. way-1.
        self._support_y = torch.arange(self.way, device=self.device).repeat_interleave(self.shot)
        self._query_y = torch.arange(self.way, device=self.device).repeat_interleave(self.query)

    def _group_positions(self, split_name: str) -> list[np.ndarray]:
        """Positions in ``self.classes`` of each group with at least ``way`` classes, groups
        in sorted order (so the list, and the episodes, do not depend on class order)."""
        groups = self.dataset.class_groups
        if groups is None:
            raise DataError(f"{self.dataset.name} names no class groups, so episodes cannot be drawn within one "
                            "group; drop --within-groups (omniglot's groups are its alphabets)")
        members: dict[str, list[int]] = {}
        for position, class_id in enumerate(self.classes.tolist()):
            members.setdefault(groups[class_id], []).append(position)
        usable = [np.asarray(members[g], dtype=np.int64) for g in sorted(members) if len(members[g]) >= self.way]
        if not usable:
            largest = max(members, key=lambda g: len(members[g]))
            raise DataError(f"{self.way}-way episodes within one group need a group of {self.way} classes, but the "
                            f"largest group of {self.dataset.name} split '{split_name}', '{largest}', has "
                            f"{len(members[largest])}; use --way {len(members[largest])} or fewer")
        return usable

    def __repr__(self) -> str:
        within = ", within groups" if self.within_groups else ""
        return (f"EpisodeSampler({self.dataset.name}/{self.split or 'all'}, {self.way}-way {self.shot}-shot "
                f"{self.query}-query{within}, seed={self.seed}"
                f"{'' if self.device.type == 'cpu' else f', device={self.device}'})")

    def on(self, device: torch.device | str | None) -> "EpisodeSampler":
        """This sampler on ``device``: the same episodes, gathered there."""
        device = torch.device("cpu") if device is None else torch.device(device)
        if device == self.device:
            return self
        return EpisodeSampler(self.dataset, self.split, self.way, self.shot, self.query, self.seed, device=device,
                              within_groups=self.within_groups)

    def indices(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The chosen split positions ``(way,)`` and image indices ``(way, shot + query)`` of episode ``i``."""
        rng = np.random.default_rng((self.seed, int(i)))
        if self.within_groups:
            group = self._groups[int(rng.integers(len(self._groups)))]
            chosen = group[rng.choice(len(group), self.way, replace=False)]
        else:
            chosen = rng.choice(len(self.classes), self.way, replace=False)
        counts = self._counts[chosen]
        # A random key per image, +inf past each class's end: sorting the keys gives a
        # uniform random subset of every class in one vectorised call.
        keys = rng.random((self.way, len(self._positions)))
        keys[self._positions[None, :] >= counts[:, None]] = np.inf
        positions = np.argsort(keys, axis=1)[:, : self.shot + self.query]
        return chosen, self._offsets[chosen][:, None] + positions

    def episode(self, i: int) -> Episode:
        chosen, index = self.indices(i)
        # Support then query, class-major, gathered in one call: both halves come out
        # contiguous. index_select, not advanced indexing: the latter is far slower on CPU.
        order = torch.from_numpy(np.concatenate([index[:, : self.shot].ravel(), index[:, self.shot :].ravel()]))
        if self.device.type != "cpu":
            order = order.to(self.device, non_blocking=True)
        images = to_float_images(torch.index_select(self._images, 0, order))
        n_support = self.way * self.shot
        return Episode(
            support_x=images[:n_support],
            support_y=self._support_y.clone(),
            query_x=images[n_support:],
            query_y=self._query_y.clone(),
            way=self.way,
            shot=self.shot,
            classes=tuple(self.classes[chosen].tolist()),
        )

    def batch(self, step: int, size: int) -> list[Episode]:
        """The meta-batch of training step ``step``: episodes ``step*size .. step*size+size-1``."""
        return [self.episode(step * size + j) for j in range(size)]

    def suite(self, count: int) -> Iterator[Episode]:
        """Episodes ``0 .. count-1``: a fixed evaluation suite."""
        return (self.episode(i) for i in range(count))
