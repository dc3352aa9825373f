"""Meta-learned model selection: predict which pre-trained model will do best on a new task.

The data is a plain table, a list of dict rows, one per (task, model):

* ``task``: the task's id; ``group``: what must never be split between training and test
  (the dataset, the alphabet ...); ``model``: the candidate model's name;
* numeric meta-features, named by prefix: ``task.*`` (way, shot, ...), ``model.*``
  (``model.parameters``, ...), ``score.*`` (transferability scores, see :mod:`.scores`);
  ``None`` or a missing key is a missing value (NaN, which gradient-boosted trees handle);
* ``accuracy``: the model's accuracy on the task (needed to fit, not to predict).

A predictor has ``fit(rows)``, ``predict(rows) -> one number per row`` (higher = better)
and ``predicts_accuracy`` (whether those numbers are accuracies, so that their MSE means
something). :class:`MetaLearner` (gradient-boosted trees, in the spirit of learned model
selection from meta-features, e.g. Achille et al., 2019, "Task2Vec"; Öztürk et al., 2022,
"Zero-shot AutoML with pretrained models") and the baselines all have that interface;
:func:`leave_one_group_out` evaluates any of them on groups it never trained on, and
:func:`compare` reports every one with :func:`~.metrics.selection_report`.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.model_selection import LeaveOneGroupOut

from ..errors import ConfigError, DataError
from .metrics import selection_report

Row = dict
FEATURE_PREFIXES = ("task.", "model.", "score.")
OBJECTIVES = ("regression", "ranking")


class Predictor(Protocol):
    """What :func:`leave_one_group_out` needs: ``fit``, ``predict`` (one number per row) and
    whether those numbers are accuracies."""

    predicts_accuracy: bool

    def fit(self, rows: Sequence[Row]) -> "Predictor": ...

    def predict(self, rows: Sequence[Row]) -> np.ndarray: ...


# -- the table ----------------------------------------------------------------------------------

def check_rows(rows: Sequence[Row], *, need_accuracy: bool) -> None:
    """Raise :class:`DataError` unless ``rows`` is a valid table (see the module docstring)."""
    if not rows:
        raise DataError("the table has no rows")
    seen, group_of = set(), {}
    for i, row in enumerate(rows):
        missing = [key for key in ("task", "group", "model") if key not in row]
        if missing:
            raise DataError(f"row {i} lacks {', '.join(missing)}")
        key = (row["task"], row["model"])
        if key in seen:
            raise DataError(f"task {row['task']!r} has model {row['model']!r} twice")
        seen.add(key)
        if group_of.setdefault(row["task"], row["group"]) != row["group"]:
            raise DataError(f"task {row['task']!r} is in two groups: {group_of[row['task']]!r} and {row['group']!r}")
        if need_accuracy:
            acc = row.get("accuracy")
            if not isinstance(acc, (int, float, np.number)) or not math.isfinite(acc):
                raise DataError(f"row {i} (task {row['task']!r}, model {row['model']!r}) needs a finite accuracy, "
                                f"got {acc!r}")


def feature_columns(rows: Sequence[Row], features: Sequence[str] | None = None) -> list[str]:
    """The meta-feature columns to use, sorted.

    ``features`` lists column names or prefixes ending in ``.`` (``("task.", "model.")``
    drops the scores); ``None`` means every ``task.*``, ``model.*`` and ``score.*`` column.
    """
    present = sorted({key for row in rows for key in row if key.startswith(FEATURE_PREFIXES)})
    if features is None:
        return present
    wanted = [c for c in present if any(c == f or (f.endswith(".") and c.startswith(f)) for f in features)]
    named = [f for f in features if not f.endswith(".") and f not in present]
    if named:
        raise ConfigError(f"no column {', '.join(named)} in the table; it has: {', '.join(present)}")
    return wanted


def feature_matrix(rows: Sequence[Row], columns: Sequence[str]) -> np.ndarray:
    """Rows × columns as float64, with ``None`` and missing keys as NaN."""
    out = np.full((len(rows), len(columns)), np.nan)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            value = row.get(column)
            if value is None:
                continue
            try:
                out[i, j] = float(value)
            except (TypeError, ValueError):
                raise DataError(f"column {column} must be numeric, got {value!r} (task {row['task']!r})") from None
    return out


def _task_index(rows: Sequence[Row]) -> tuple[list, np.ndarray]:
    """The task ids in order of first appearance and each row's position among them."""
    tasks: dict = {}
    index = np.array([tasks.setdefault(row["task"], len(tasks)) for row in rows])
    return list(tasks), index


# -- the meta-learner -------------------------------------------------------------------------

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

    ``features`` selects columns (see :func:`feature_columns`).
    """

    objective: str = "regression"
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

    def _trees(self, kind):
        return kind(max_iter=self.max_iter, learning_rate=self.learning_rate, early_stopping=False,
                    random_state=self.seed)

    def fit(self, rows: Sequence[Row]) -> "MetaLearner":
        check_rows(rows, need_accuracy=True)
        columns = feature_columns(rows, self.features)
        x = feature_matrix(rows, columns)
        # A column with no value in training (e.g. LEEP when only one model has a source
        # head, which the pairwise differences leave all-NaN) teaches nothing, and the
        # trees refuse it.
        known = ~np.isnan(x).all(axis=0)
        self.columns_, x = [c for c, k in zip(columns, known) if k], x[:, known]
        if not self.columns_:
            raise ConfigError("the meta-learner has no feature column to learn from")
        acc = np.array([float(row["accuracy"]) for row in rows])
        tasks, index = _task_index(rows)
        task_mean = np.bincount(index, acc) / np.bincount(index)
        if self.objective == "regression":
            self.model_ = self._trees(HistGradientBoostingRegressor).fit(x, acc - task_mean[index])
            levels = self._task_features(x, index, len(tasks))
            self.level_ = (self._trees(HistGradientBoostingRegressor).fit(levels, task_mean)
                           if levels.shape[1] else float(task_mean.mean()))
        else:
            first, second = self._task_pairs(index)
            gap = acc[first] - acc[second]
            keep = gap != 0
            if not keep.any():
                raise DataError("every model has the same accuracy on every training task: nothing to rank")
            pairs = self._pair_features(x, first[keep], second[keep])
            # A pair column can be all-NaN when x's is not (a score only one model has: every
            # difference is NaN); the trees refuse such a column, and it teaches nothing.
            self.pair_columns_ = ~np.isnan(pairs).all(axis=0)
            self.model_ = self._trees(HistGradientBoostingClassifier).fit(pairs[:, self.pair_columns_], gap[keep] > 0)
        return self

    def predict(self, rows: Sequence[Row]) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise ConfigError("fit the meta-learner before predicting")
        check_rows(rows, need_accuracy=False)
        x = feature_matrix(rows, self.columns_)
        tasks, index = _task_index(rows)
        if self.objective == "regression":
            centred = self.model_.predict(x)
            levels = self._task_features(x, index, len(tasks))
            level = self.level_.predict(levels) if levels.shape[1] else np.full(len(tasks), self.level_)
            offset = level - np.bincount(index, centred) / np.bincount(index)
            return centred + offset[index]
        first, second = self._task_pairs(index)
        win = (self.model_.predict_proba(self._pair_features(x, first, second)[:, self.pair_columns_])[:, 1]
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


# -- baselines ----------------------------------------------------------------------------------

@dataclass
class RandomPick:
    """A uniformly random score per (task, model), the same for a given seed in every run."""

    seed: int = 0
    predicts_accuracy = False

    def fit(self, rows: Sequence[Row]) -> "RandomPick":
        return self

    def predict(self, rows: Sequence[Row]) -> np.ndarray:
        # Seeded per row (not per call), so a task's draw does not depend on which fold it is in.
        return np.array([np.random.default_rng([self.seed, zlib.crc32(f"{r['task']}\0{r['model']}".encode())])
                         .random() for r in rows])


@dataclass
class BestOnAverage:
    """Each model's mean accuracy over the training tasks (the overall mean for a model never seen)."""

    predicts_accuracy = True

    def fit(self, rows: Sequence[Row]) -> "BestOnAverage":
        check_rows(rows, need_accuracy=True)
        totals: dict[str, list[float]] = {}
        for row in rows:
            totals.setdefault(row["model"], []).append(float(row["accuracy"]))
        self.means_ = {model: float(np.mean(v)) for model, v in totals.items()}
        self.overall_ = float(np.mean([float(row["accuracy"]) for row in rows]))
        return self

    def predict(self, rows: Sequence[Row]) -> np.ndarray:
        return np.array([self.means_.get(row["model"], self.overall_) for row in rows])


@dataclass
class ColumnPredictor:
    """Ranks by one column, e.g. ``model.parameters`` (the biggest model) or ``score.logme``.

    A row without the value ranks last (-inf).
    """

    column: str
    predicts_accuracy = False

    def fit(self, rows: Sequence[Row]) -> "ColumnPredictor":
        return self

    def predict(self, rows: Sequence[Row]) -> np.ndarray:
        values = feature_matrix(rows, [self.column])[:, 0]
        return np.where(np.isnan(values), -np.inf, values)


def biggest_model() -> ColumnPredictor:
    return ColumnPredictor("model.parameters")


def single_score(name: str) -> ColumnPredictor:
    """Rank by one transferability score: ``single_score("logme")`` reads ``score.logme``."""
    return ColumnPredictor(name if name.startswith("score.") else f"score.{name}")


@dataclass
class Oracle:
    """The true accuracy: the upper bound of every metric. The only predictor shown test accuracies."""

    predicts_accuracy = True
    uses_truth = True

    def fit(self, rows: Sequence[Row]) -> "Oracle":
        return self

    def predict(self, rows: Sequence[Row]) -> np.ndarray:
        check_rows(rows, need_accuracy=True)
        return np.array([float(row["accuracy"]) for row in rows])


# -- evaluation ---------------------------------------------------------------------------------

@dataclass
class HeldOutPredictions:
    """A predictor's predictions for every task, each made without its group in training."""

    tasks: list
    groups: list
    models: list[str]
    true: np.ndarray  # (tasks, models)
    predicted: np.ndarray  # (tasks, models)
    accuracy_predictions: bool

    def report(self, **options) -> dict[str, dict[str, float]]:
        return selection_report(self.true, self.predicted, accuracy_predictions=self.accuracy_predictions,
                                **options)


def leave_one_group_out(rows: Sequence[Row], make_learner: Callable[[], Predictor]) -> HeldOutPredictions:
    """Predict every task with a fresh learner trained on the other groups only.

    Folds come from scikit-learn's ``LeaveOneGroupOut`` over the rows' ``group``, so no row
    of the held-out group is ever in training. Test rows reach ``predict`` without their
    ``accuracy`` (only a predictor with ``uses_truth``, the oracle, sees it). Every task must
    have the same set of models.
    """
    check_rows(rows, need_accuracy=True)
    tasks, index = _task_index(rows)
    models = sorted({row["model"] for row in rows})
    column = {model: j for j, model in enumerate(models)}
    per_task = np.bincount(index, minlength=len(tasks))
    if (per_task != len(models)).any():
        t = int(np.argmax(per_task != len(models)))
        raise DataError(f"task {tasks[t]!r} has {per_task[t]} of the {len(models)} models; every task needs all")
    groups = [row["group"] for row in rows]
    if len(set(groups)) < 2:
        raise ConfigError("leave-one-group-out needs at least 2 groups")
    true = np.full((len(tasks), len(models)), np.nan)
    predicted = np.full_like(true, np.nan)
    cols = np.array([column[row["model"]] for row in rows])
    true[index, cols] = [float(row["accuracy"]) for row in rows]
    learner = None
    for train, test in LeaveOneGroupOut().split(np.zeros(len(rows)), groups=groups):
        learner = make_learner()
        learner.fit([rows[i] for i in train])
        shown = [rows[i] if getattr(learner, "uses_truth", False)
                 else {k: v for k, v in rows[i].items() if k != "accuracy"} for i in test]
        out = np.asarray(learner.predict(shown), dtype=np.float64)
        if out.shape != (len(test),):
            raise DataError(f"{type(learner).__name__}.predict gave shape {out.shape} for {len(test)} rows")
        predicted[index[test], cols[test]] = out
    group_of = {row["task"]: row["group"] for row in rows}
    return HeldOutPredictions(tasks, [group_of[t] for t in tasks], models, true, predicted,
                              bool(getattr(learner, "predicts_accuracy", False)))


def default_predictors(rows: Sequence[Row], seed: int = 0) -> dict[str, Callable[[], Predictor]]:
    """The baselines and meta-learners :func:`compare` runs, by name, as factories."""
    columns = feature_columns(rows)
    scores = [c for c in columns if c.startswith("score.")]
    out: dict[str, Callable[[], Predictor]] = {
        "random": lambda: RandomPick(seed),
        "best-on-average": BestOnAverage,
    }
    if "model.parameters" in columns:
        out["biggest model"] = biggest_model
    for column in scores:
        out[column] = lambda column=column: ColumnPredictor(column)
    out["meta-learner"] = lambda: MetaLearner(seed=seed)
    out["meta-learner (ranking)"] = lambda: MetaLearner("ranking", seed=seed)
    if scores and len(scores) < len(columns):
        out["meta-learner without scores"] = lambda: MetaLearner(features=("task.", "model."), seed=seed)
    out["oracle"] = Oracle
    return out


def compare(rows: Sequence[Row], predictors: dict[str, Callable[[], Predictor]] | None = None, *,
            seed: int = 0, resamples: int = 2000) -> dict[str, dict[str, dict[str, float]]]:
    """``{predictor name: selection_report}`` of every predictor under leave-one-group-out.

    ``predictors`` maps names to factories of fresh predictors (default:
    :func:`default_predictors`). Every report resamples the same tasks (same ``seed``).
    """
    predictors = default_predictors(rows, seed) if predictors is None else predictors
    return {name: leave_one_group_out(rows, make).report(resamples=resamples, seed=seed)
            for name, make in predictors.items()}
