"""Meta-learned model selection: predict which pre-trained model will do best on a new task.

:class:`MetaLearner` (gradient-boosted trees, in the spirit of learned model selection
from meta-features, e.g. Achille et al., 2019, "Task2Vec", arXiv:1902.03545; Öztürk et
al., 2022, "Zero-shot AutoML with pretrained models", arXiv:2206.08476) learns from the
table of :mod:`.table` (one row per task and model). The baselines it is judged against
are in :mod:`.baselines`; :mod:`.comparison` evaluates any predictor on groups it never
trained on (leave-one-group-out) and compares them with :func:`~.metrics.selection_report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from ..errors import CheckpointError, ConfigError, DataError
from .trees import Trees, export_trees
from .table import FEATURE_PREFIXES, Row, check_rows, feature_columns, feature_matrix, relative_scores, task_index

OBJECTIVES = ("regression", "ranking")


@dataclass
class MetaLearner:
    """Gradient-boosted trees that predict how well each model does on a task.

    ``objective="regression"``: a ``HistGradientBoostingRegressor`` predicts each row's
    *task-centred* accuracy (accuracy minus the mean accuracy of the models on that task),
    so it learns which model is better than the others, not which tasks are easy. To turn
    that into an accuracy (for the MSE), a second regressor predicts the task's mean
    accuracy from its ``task.*`` columns (the training tasks' mean when there are none);
    the predicted accuracy is that level plus the centred predictions, re-centred within
    the task.

    ``objective="ranking"``: pairwise. For every ordered pair of models on a training task
    with different accuracies, a ``HistGradientBoostingClassifier`` learns whether the first
    is better from [task columns, first - second, first, second] (the non-task columns: the
    task columns let the trees learn that what matters differs between kinds of task). A
    model's prediction is its mean probability of beating each other model of the task.

    Both objectives first add per-task standardised and rank-transformed copies of every
    score (:func:`relative_scores`): what a score says is how a model compares with the
    others on the same task, not its raw level. ``objective="ranking"`` (the default) also
    fits the regression model, so :meth:`predict_accuracy` gives accuracies to show beside
    the ranking (with :mod:`.uncertainty`'s calibrated intervals).

    ``features`` selects columns (see :func:`feature_columns`). A fitted learner is data:
    :meth:`state` gives its settings, columns and trees (:mod:`.trees`), :meth:`from_state`
    rebuilds it from them, predicting exactly as the fitted one.
    """

    objective: str = "ranking"
    features: Sequence[str] | None = None
    max_iter: int = 200
    learning_rate: float = 0.05
    seed: int = 0
    columns_: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective '{self.objective}'; choose one of: {', '.join(OBJECTIVES)}")

    @property
    def predicts_accuracy(self) -> bool:
        return self.objective == "regression"

    def _table(self, rows: Sequence[Row], columns: Sequence[str]) -> tuple[np.ndarray, list[str], np.ndarray, int]:
        """The rows' meta-features plus :func:`relative_scores`, their names, task index and count."""
        tasks, index = task_index(rows)
        x, names = relative_scores(feature_matrix(rows, columns), columns, index)
        return x, names, index, len(tasks)

    def _trees(self, kind):
        return kind(max_iter=self.max_iter, learning_rate=self.learning_rate, early_stopping=False,
                    random_state=self.seed)

    def fit(self, rows: Sequence[Row]) -> "MetaLearner":
        check_rows(rows, need_accuracy=True)
        columns = feature_columns(rows, self.features)
        x, names, index, n_tasks = self._table(rows, columns)
        # A column with no value in training (e.g. LEEP when only one model has a source
        # head, which the pairwise differences leave all-NaN) teaches nothing, and the
        # trees refuse it.
        known = ~np.isnan(x).all(axis=0)
        self.base_columns_ = columns
        self.columns_, x = [c for c, k in zip(names, known) if k], x[:, known]
        self.known_ = known
        if not self.columns_:
            raise ConfigError("the meta-learner has no feature column to learn from")
        acc = np.array([float(row["accuracy"]) for row in rows])
        task_mean = np.bincount(index, acc) / np.bincount(index)
        self.model_ = self._trees(HistGradientBoostingRegressor).fit(x, acc - task_mean[index])
        levels = self._task_features(x, index, n_tasks)
        self.level_ = (self._trees(HistGradientBoostingRegressor).fit(levels, task_mean)
                       if levels.shape[1] else float(task_mean.mean()))
        if self.objective == "ranking":
            first, second = self._task_pairs(index)
            gap = acc[first] - acc[second]
            keep = gap != 0
            if not keep.any():
                raise DataError("every model has the same accuracy on every training task: nothing to rank")
            pairs = self._pair_features(x, first[keep], second[keep])
            # A pair column can be all-NaN when x's is not (a score only one model has: every
            # difference is NaN); the trees refuse such a column, and it teaches nothing.
            self.pair_columns_ = ~np.isnan(pairs).all(axis=0)
            self.ranker_ = self._trees(HistGradientBoostingClassifier).fit(pairs[:, self.pair_columns_], gap[keep] > 0)
        return self

    def _features_of(self, rows: Sequence[Row]) -> tuple[np.ndarray, np.ndarray, int]:
        if not hasattr(self, "model_"):
            raise ConfigError("fit the meta-learner before predicting")
        check_rows(rows, need_accuracy=False)
        x, _, index, n_tasks = self._table(rows, self.base_columns_)
        return x[:, self.known_], index, n_tasks

    def predict_accuracy(self, rows: Sequence[Row]) -> np.ndarray:
        """Predicted accuracy of each row: the task's predicted level plus the row's predicted
        difference from the task's mean, re-centred within the task."""
        x, index, n_tasks = self._features_of(rows)
        centred = self.model_.predict(x)
        levels = self._task_features(x, index, n_tasks)
        level = self.level_.predict(levels) if levels.shape[1] else np.full(n_tasks, self.level_)
        offset = level - np.bincount(index, centred) / np.bincount(index)
        return centred + offset[index]

    def predict(self, rows: Sequence[Row]) -> np.ndarray:
        if self.objective == "regression":
            return self.predict_accuracy(rows)
        x, index, _ = self._features_of(rows)
        first, second = self._task_pairs(index)
        win = (self.ranker_.predict_proba(self._pair_features(x, first, second)[:, self.pair_columns_])[:, 1]
               if len(first) else np.empty(0))
        # Each pair is scored in both orders: i's chance of beating j averages win(i, j) and
        # 1 - win(j, i); its prediction is the mean of that over the other models of its task.
        wins = np.bincount(first, 0.5 * win, len(rows)) + np.bincount(second, 0.5 * (1 - win), len(rows))
        others = np.bincount(index)[index] - 1
        return np.where(others > 0, wins / np.maximum(others, 1), 0.5)

    def _task_columns(self) -> np.ndarray:
        return np.array([c.startswith("task.") for c in self.columns_], dtype=bool)

    def _task_features(self, x: np.ndarray, index: np.ndarray, n_tasks: int) -> np.ndarray:
        """One row per task: the mean of its rows' ``task.*`` columns (the same on every row)."""
        part = x[:, self._task_columns()]
        sums, counts = np.zeros((n_tasks, part.shape[1])), np.zeros((n_tasks, part.shape[1]))
        np.add.at(sums, index, np.nan_to_num(part))
        np.add.at(counts, index, ~np.isnan(part))
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    @staticmethod
    def _task_pairs(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every ordered pair (i, j), i ≠ j, of rows of the same task."""
        firsts, seconds = [np.empty(0, dtype=int)], [np.empty(0, dtype=int)]
        for t in np.unique(index):
            rows_t = np.flatnonzero(index == t)
            a, b = np.nonzero(~np.eye(len(rows_t), dtype=bool))
            firsts.append(rows_t[a])
            seconds.append(rows_t[b])
        return np.concatenate(firsts), np.concatenate(seconds)

    def _pair_features(self, x: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        task = self._task_columns()
        own = x[:, ~task]
        return np.hstack([x[first][:, task], own[first] - own[second], own[first], own[second]])


    # -- the fitted learner as data ------------------------------------------------------------

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(info, arrays)``: the settings and columns as JSON-able values and the trees'
        arrays, named ``model.*``, ``level.*`` (absent when the level is one number) and
        ``ranker.*``; :meth:`from_state` rebuilds the learner from them."""
        if not hasattr(self, "model_"):
            raise ConfigError("fit the meta-learner before storing it")
        info = {"objective": self.objective, "max_iter": self.max_iter, "learning_rate": self.learning_rate,
                "seed": self.seed, "features": None if self.features is None else list(self.features),
                "base_columns": list(self.base_columns_), "known": [bool(k) for k in self.known_],
                "level": self.level_ if isinstance(self.level_, float) else None, "trees": {}}
        arrays = {}
        parts = {"model": self.model_, "level": self.level_, "ranker": getattr(self, "ranker_", None)}
        for part, estimator in parts.items():
            if estimator is None or isinstance(estimator, float):
                continue
            info["trees"][part], trees = export_trees(estimator)
            arrays.update({f"{part}.{name}": a for name, a in trees.items()})
        if self.objective == "ranking":
            info["pair_columns"] = [bool(k) for k in self.pair_columns_]
        return info, arrays

    @classmethod
    def from_state(cls, info: dict, arrays: dict[str, np.ndarray], what: str = "the meta-learner") -> "MetaLearner":
        """The learner :meth:`state` described; anything inconsistent is a one-line CheckpointError."""
        if not isinstance(info, dict):
            raise CheckpointError(f"{what}: its description is not a JSON object")

        def need(key, kind, check=lambda v: True):
            value = info.get(key)
            if type(value) not in kind or not check(value):
                raise CheckpointError(f"{what}: its {key} is missing or invalid ({str(value)[:60]!r})")
            return value

        base = need("base_columns", (list,), lambda v: all(isinstance(c, str) and c.startswith(FEATURE_PREFIXES)
                                                            for c in v))
        features = need("features", (list, type(None)), lambda v: v is None or all(isinstance(f, str) for f in v))
        learner = cls(need("objective", (str,), lambda v: v in OBJECTIVES), features=features and tuple(features),
                      max_iter=need("max_iter", (int,)),
                      learning_rate=float(need("learning_rate", (int, float))), seed=need("seed", (int,)))
        _, names = relative_scores(np.empty((0, len(base))), base, np.empty(0, dtype=int))
        known = need("known", (list,), lambda v: len(v) == len(names) and all(isinstance(k, bool) for k in v))
        learner.base_columns_, learner.known_ = base, np.array(known, dtype=bool)
        learner.columns_ = [c for c, k in zip(names, known) if k]
        task = learner._task_columns()
        trees = need("trees", (dict,))

        def load(part, n_features):
            kind = trees.get(part)
            return Trees(kind, {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{part}.")},
                         n_features, f"{what}, {part} trees")

        learner.model_ = load("model", len(learner.columns_))
        level = info.get("level")
        if "level" in trees:
            learner.level_ = load("level", int(task.sum()))
        elif isinstance(level, (int, float)) and not isinstance(level, bool) and np.isfinite(level):
            learner.level_ = float(level)
        else:
            raise CheckpointError(f"{what}: it has neither level trees nor a finite level")
        if learner.objective == "ranking":
            pair = need("pair_columns", (list,), lambda v: len(v) == task.sum() + 3 * (~task).sum()
                        and all(isinstance(k, bool) for k in v))
            learner.pair_columns_ = np.array(pair, dtype=bool)
            learner.ranker_ = load("ranker", int(learner.pair_columns_.sum()))
        return learner


__all__ = ["OBJECTIVES", "MetaLearner"]
