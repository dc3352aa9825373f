"""The held-out tasks of the meta-dataset: groups, task shapes, and their episodes.

Tasks come from classes no zoo model was trained on (:data:`GROUPS`): Omniglot's
evaluation alphabets, upright, in three groups by script family (the zoo trains on
background alphabets), the same alphabets' characters rotated by 90°, 180° and 270° as
classes of their own, upright digits 5-9, rotated digits 5-9 (the digits models train
on 0-4), and the test regions of scikit-learn's sample photos in grey
(:mod:`fewshot.data.photos`: the photo models train on the other regions). A task's group
is the unit of leave-one-group-out evaluation. Task ``i`` is fully determined by
(sources, seed, i): its group is ``i`` modulo the number of groups, its way and shot are
drawn from a generator seeded with ``(seed, i)``, and its episode is episode ``i`` of an
:class:`~fewshot.data.EpisodeSampler` of that group with the same seed, so asking for more
tasks later extends the same list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from .groups import EVALUATION_GROUPS, alphabet_splits


@dataclass(frozen=True)
class Group:
    """Where a group's tasks come from and what shapes they take."""

    dataset: str                 # "omniglot", "digits" or "photo-regions"
    ways: tuple[int, ...]
    shots: tuple[int, ...]
    query: int


_OMNIGLOT = Group("omniglot", (2, 5, 10, 20), (1, 2, 5), 10)
# Held-out task groups by source. Way × shot is capped (MAX_SUPPORT) to keep each
# fine-tuning in the ground truth within about a CPU-second.
GROUPS: dict[str, dict[str, Group]] = {
    "omniglot": {**{name: _OMNIGLOT for name in EVALUATION_GROUPS}, "eval-rotated": _OMNIGLOT},
    "digits": {"digits": Group("digits", (2, 3, 5), (1, 2, 5, 10), 15),
               "digits-rot": Group("digits", (2, 5, 10), (1, 2, 5), 15)},
    "photos": {"photos": Group("photo-regions", (2, 5, 10), (1, 2, 5), 10)},
}
SOURCES = tuple(GROUPS)
MAX_SUPPORT = 50
#: The photo regions as tasks and zoo sources see them: grey, as every zoo model takes one channel.
PHOTO_OPTIONS = {"image_size": 32, "channels": 1}


@dataclass(frozen=True)
class TaskSpec:
    """Task ``index`` of a meta-dataset: its id, group and episode shape."""

    task: str
    group: str
    index: int
    way: int
    shot: int
    query: int


def task_groups(sources: Sequence[str]) -> dict[str, Group]:
    unknown = sorted(set(sources) - set(GROUPS))
    if unknown or not sources:
        raise ConfigError(f"unknown task source(s) {', '.join(unknown) or '(none given)'}; choose from: "
                          f"{', '.join(SOURCES)}")
    return {name: group for source in sorted(set(sources)) for name, group in GROUPS[source].items()}


def sample_tasks(count: int, sources: Sequence[str] = SOURCES, seed: int = 0) -> list[TaskSpec]:
    """Tasks ``0 .. count-1``: groups in turn, way and shot drawn per task (see the module docstring)."""
    groups = task_groups(sources)
    names = list(groups)
    tasks = []
    for i in range(int(count)):
        name = names[i % len(names)]
        group = groups[name]
        rng = np.random.default_rng((seed, i))
        way = int(rng.choice(group.ways))
        shots = [s for s in group.shots if way * s <= MAX_SUPPORT] or [min(group.shots)]
        shot = int(rng.choice(shots))
        tasks.append(TaskSpec(f"{name}/{i:05d}", name, i, way, shot, group.query))
    return tasks


def _rotated(dataset) -> list[int]:
    """Class ids of the evaluation alphabets' rotated characters (``.../rot090`` and the like)."""
    alphabets = {a for names in EVALUATION_GROUPS.values() for a in names}
    return [i for i, name in enumerate(dataset.class_names)
            if name.split("/")[0] in alphabets and len(name.split("/")) == 3 and name.split("/")[2] != "rot000"]


class TaskSource:
    """Episodes of the held-out groups, datasets loaded on first use and kept."""

    def __init__(self, sources: Sequence[str], seed: int = 0, data_root: str | Path | None = None):
        self.groups, self.seed, self.data_root = task_groups(sources), int(seed), data_root
        self._datasets: dict[str, Any] = {}
        self._samplers: dict[tuple, Any] = {}

    def dataset(self, kind: str):
        from ..data import load_dataset

        if kind not in self._datasets:
            if kind == "omniglot":
                data = load_dataset("omniglot", self.data_root, image_size=28, split_scheme="background")
                data.splits.update(alphabet_splits(data, EVALUATION_GROUPS, upright_only=True))
                data.splits["eval-rotated"] = _rotated(data)
            elif kind == "photo-regions":
                data = load_dataset("photo-regions", self.data_root, **PHOTO_OPTIONS)
                data.splits["photos"] = data.split_classes("test")
            else:
                # Digits 5-9, which no zoo model trains on: upright, and rotated as classes of their own.
                data = load_dataset("digits", self.data_root, rotations=True)
                data.splits.update({"digits": [d * 4 for d in range(5, 10)],
                                    "digits-rot": [d * 4 + k for d in range(5, 10) for k in (1, 2, 3)]})
            self._datasets[kind] = data
        return self._datasets[kind]

    def episode(self, task: TaskSpec):
        from ..data import EpisodeSampler

        key = (task.group, task.way, task.shot, task.query)
        if key not in self._samplers:
            data = self.dataset(self.groups[task.group].dataset)
            self._samplers[key] = EpisodeSampler(data, task.group, task.way, task.shot, task.query, seed=self.seed)
        return self._samplers[key].episode(task.index)


__all__ = ["GROUPS", "Group", "MAX_SUPPORT", "PHOTO_OPTIONS", "SOURCES", "TaskSource", "TaskSpec", "sample_tasks", "task_groups"]
