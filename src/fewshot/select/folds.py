"""Which tasks a selector may learn from when it is tested on a group: groups and their relations.

Leave-one-group-out keeps a test group's tasks out of training, but groups can share
source images: the meta-dataset's rotated Omniglot characters are the upright evaluation
alphabets turned, rotated digits are the upright digits turned. A selector trained on a
rotated group has seen the test group's images, so tasks are not independent across those
groups. :func:`group_folds` therefore holds out, with each test group, every group declared
related to it (a symmetric relation, not transitive: two groups related to a third need not
be related to each other); :data:`RELATED_GROUPS` declares the meta-dataset's relations.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError

#: The meta-dataset's groups (:data:`~.tasks.GROUPS`) that share source images: a group
#: and its rotated or re-drawn copies never sit on opposite sides of a fold.
RELATED_GROUPS: dict[str, tuple[str, ...]] = {
    "eval-rotated": ("eval-brahmic", "eval-historic", "eval-invented"),
    "digits-rot": ("digits",),
}


def relation(related: Mapping[str, Iterable[str]] | None) -> dict[str, frozenset[str]]:
    """The symmetric closure of a declared relation: ``{group: the groups related to it}``."""
    out: dict[str, set[str]] = {}
    for group, others in (related or {}).items():
        for other in others:
            if other == group:
                continue
            out.setdefault(group, set()).add(other)
            out.setdefault(other, set()).add(group)
    return {g: frozenset(o) for g, o in out.items()}


def group_folds(groups: Sequence, related: Mapping[str, Iterable[str]] | None = None,
                *, strict: bool = True) -> list[tuple[np.ndarray, np.ndarray, object]]:
    """``(train indices, test indices, test group)`` for each group of ``groups`` (one entry per row).

    Training leaves out the test group and every group related to it. A fold with nothing
    left to train on raises :class:`ConfigError` when ``strict`` and is skipped otherwise.
    """
    groups = np.asarray(list(groups), dtype=object)
    if len(set(groups.tolist())) < 2:
        raise ConfigError("leave-one-group-out needs at least 2 groups")
    closure = relation(related)
    folds = []
    for group in sorted(set(groups.tolist()), key=str):
        out = {group, *closure.get(group, ())}
        test = np.flatnonzero(groups == group)
        train = np.flatnonzero([g not in out for g in groups])
        if not len(train):
            if strict:
                raise ConfigError(f"group {group!r} is related to every other group: nothing is left to train on "
                                  f"when it is held out")
            continue
        folds.append((train, test, group))
    return folds


__all__ = ["RELATED_GROUPS", "group_folds", "relation"]
