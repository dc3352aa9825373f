"""Choosing a selector's variant without looking at the test groups: nested leave-one-group-out.

A variant (ranking or regression objective, with or without score features ...) picked
because it did best under leave-one-group-out on the very groups it is then reported on
has seen those groups' results: its score is optimistic. :class:`NestedChoice` makes that
choice inside each outer training set: it runs leave-one-group-out over the training
groups only (related groups held out together, :mod:`.folds`), keeps the candidate with the
lowest mean top-1 regret there, and refits it on all training groups. Used as one
predictor in :func:`~.comparison.leave_one_group_out`, the test group never informs
the choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .comparison import leave_one_group_out
from .folds import group_folds
from .metrics import per_task
from .table import Predictor, Row, check_rows


@dataclass
class NestedChoice:
    """The candidate with the lowest inner leave-one-group-out regret, refitted on every training row.

    ``candidates`` maps names to factories of fresh predictors; ``related`` declares groups
    held out together (:data:`~.folds.RELATED_GROUPS`). Inner folds whose group is related
    to every other training group are skipped (nothing to train on); when that leaves no
    inner fold at all (the training groups are all related, e.g. upright and rotated
    digits), the inner folds hold out single groups and ``inner_related_`` is False: the
    choice is then leakier between training groups, never toward the test group. Ties go
    to the first candidate. After :meth:`fit`, ``chosen_`` names the choice,
    ``inner_regret_`` gives each candidate's inner mean regret and ``groups_seen_`` the
    training groups.
    """

    candidates: Mapping[str, Callable[[], Predictor]]
    related: Mapping[str, Iterable[str]] | None = None
    seed: int = 0
    predicts_accuracy: bool = False  # a choice between rankers: its numbers are ranks, not accuracies
    chosen_: str | None = field(default=None, init=False)
    inner_regret_: dict[str, float] = field(default_factory=dict, init=False)
    groups_seen_: list = field(default_factory=list, init=False)
    inner_related_: bool = field(default=True, init=False)

    def __post_init__(self):
        if not self.candidates:
            raise ConfigError("a nested choice needs at least one candidate")

    def fit(self, rows: Sequence[Row]) -> "NestedChoice":
        check_rows(rows, need_accuracy=True)
        self.groups_seen_ = sorted({row["group"] for row in rows}, key=str)
        if len(self.groups_seen_) < 2:
            raise ConfigError(f"a nested choice needs at least 2 training groups, got {self.groups_seen_}")
        self.inner_related_ = bool(group_folds([row["group"] for row in rows], self.related, strict=False))
        related = self.related if self.inner_related_ else None
        self.inner_regret_ = {}
        for name, make in self.candidates.items():
            held = leave_one_group_out(rows, make, related, strict=False)
            regret = per_task(held.true, held.predicted, seed=self.seed)["top1_regret"]
            self.inner_regret_[name] = float(np.nanmean(regret))
        self.chosen_ = min(self.inner_regret_, key=self.inner_regret_.get)  # first on ties: dicts keep order
        self.model_ = self.candidates[self.chosen_]()
        self.model_.fit(rows)
        return self

    def predict(self, rows: Sequence[Row]) -> np.ndarray:
        if self.chosen_ is None:
            raise ConfigError("fit the nested choice before predicting")
        return np.asarray(self.model_.predict(rows), dtype=np.float64)




def meta_learner_variants(seed: int = 0) -> dict[str, Callable[[], Predictor]]:
    """The meta-learner variants a nested choice picks among: the ranking and regression
    objectives on every feature, and the ranking objective without the scores."""
    from .metalearner import MetaLearner

    return {"ranking": lambda: MetaLearner("ranking", seed=seed),
            "regression": lambda: MetaLearner("regression", seed=seed),
            "ranking without scores": lambda: MetaLearner("ranking", features=("task.", "model."), seed=seed)}


__all__ = ["NestedChoice", "meta_learner_variants"]
