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
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.model_selection import LeaveOneGroupOut

from ..errors import ConfigError, DataError
from .metrics import paired_difference, per_task, selection_report

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


def relative_scores(x: np.ndarray, columns: Sequence[str], index: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per-task standardised and rank-transformed copies of the ``score.*`` columns.

    Raw transferability scores follow each model's feature offset and scale, and their
    level changes from task to task (way, shot); what carries signal is how a model's score
    compares with the other models' on the same task. For every score column this adds
    ``z.<column>`` (the value minus the task's mean, over the task's standard deviation; 0
    when all are equal) and ``rank.<column>`` (its rank among the task's models, scaled to
    0-1, ties averaged). Missing values stay missing.
    """
    picks = [j for j, c in enumerate(columns) if c.startswith("score.")]
    extra = np.full((len(x), 2 * len(picks)), np.nan)
    for t in np.unique(index):
        rows = np.flatnonzero(index == t)
        for k, j in enumerate(picks):
            values = x[rows, j]
            known = ~np.isnan(values)
            if not known.any():
                continue
            v = values[known]
            spread = v.std()
            extra[rows[known], 2 * k] = (v - v.mean()) / spread if spread > 0 else 0.0
            extra[rows[known], 2 * k + 1] = ((stats.rankdata(v) - 0.5) / len(v)) if len(v) > 1 else 0.5
    names = [f"{kind}.{columns[j]}" for j in picks for kind in ("z", "rank")]
    return np.hstack([x, extra]), [*columns, *names]


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

    Both objectives first add per-task standardised and rank-transformed copies of every
    score (:func:`relative_scores`): what a score says is how a model compares with the
    others on the same task, not its raw level. ``objective="ranking"`` (the default) also
    fits the regression model, so :meth:`predict_accuracy` gives accuracies to show beside
    the ranking (with :mod:`.uncertainty`'s calibrated intervals).

    ``features`` selects columns (see :func:`feature_columns`).
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
        tasks, index = _task_index(rows)
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


def _one_hot(row: Row, prefix: str) -> str | None:
    """The name whose ``prefix<name>`` column is 1 in ``row`` (e.g. ``task.domain.omniglot``)."""
    hits = [key[len(prefix):] for key, value in row.items() if key.startswith(prefix) and value == 1.0]
    return hits[0] if len(hits) == 1 else None


@dataclass
class BestOnAverageInDomain:
    """Best-on-average among the models trained on the task's input domain.

    A task's domain is its one-hot ``task.domain.*`` column (the dataset it comes from); a
    model's is its ``model.source.*`` column (the dataset it was trained on). On a task, the
    candidates are the models of its domain, ranked by their mean training accuracy; when no
    model of the zoo comes from that domain (or the task's domain is unknown), every model
    is a candidate, as for best-on-average.
    """

    predicts_accuracy = False

    def fit(self, rows: Sequence[Row]) -> "BestOnAverageInDomain":
        self.average_ = BestOnAverage().fit(rows)
        return self

    def predict(self, rows: Sequence[Row]) -> np.ndarray:
        mean = self.average_.predict(rows)
        tasks, index = _task_index(rows)
        out = np.full(len(rows), np.nan)
        for t in range(len(tasks)):
            members = np.flatnonzero(index == t)
            domain = _one_hot(rows[members[0]], "task.domain.")
            inside = [i for i in members if domain is not None and _one_hot(rows[i], "model.source.") == domain]
            chosen = inside or list(members)
            out[chosen] = mean[chosen]
        return out


@dataclass
class ColumnPredictor:
    """Ranks by one column, e.g. ``model.parameters`` (the biggest model) or ``score.logme``.

    A row without the value (a score that does not apply to that model on that task) is
    NaN: not one of this selector's candidates (see :mod:`.metrics`), never a pick.
    """

    column: str
    predicts_accuracy = False

    def fit(self, rows: Sequence[Row]) -> "ColumnPredictor":
        return self

    def predict(self, rows: Sequence[Row]) -> np.ndarray:
        return feature_matrix(rows, [self.column])[:, 0]


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

    def per_task(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Each metric on each task (:func:`~.metrics.per_task`), ties broken with ``seed``."""
        return per_task(self.true, self.predicted, seed=seed)


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
    if any(c.startswith("task.domain.") for c in columns) and any(c.startswith("model.source.") for c in columns):
        out["best-on-average in domain"] = BestOnAverageInDomain
    if "model.parameters" in columns:
        out["biggest model"] = biggest_model
    for column in scores:
        out[column] = lambda column=column: ColumnPredictor(column)
    out["meta-learner (ranking)"] = lambda: MetaLearner("ranking", seed=seed)
    out["meta-learner (regression)"] = lambda: MetaLearner("regression", seed=seed)
    if scores and len(scores) < len(columns):
        out["meta-learner without scores"] = lambda: MetaLearner("ranking", features=("task.", "model."), seed=seed)
    out["oracle"] = Oracle
    return out


def held_out(rows: Sequence[Row], predictors: dict[str, Callable[[], Predictor]] | None = None, *,
             seed: int = 0) -> dict[str, HeldOutPredictions]:
    """``{predictor name: HeldOutPredictions}`` of every predictor under leave-one-group-out
    (default predictors: :func:`default_predictors`)."""
    predictors = default_predictors(rows, seed) if predictors is None else predictors
    return {name: leave_one_group_out(rows, make) for name, make in predictors.items()}


def compare(rows: Sequence[Row], predictors: dict[str, Callable[[], Predictor]] | None = None, *,
            seed: int = 0, resamples: int = 2000) -> dict[str, dict[str, dict[str, float]]]:
    """``{predictor name: selection_report}`` of every predictor under leave-one-group-out.

    ``predictors`` maps names to factories of fresh predictors (default:
    :func:`default_predictors`). Every report resamples the same tasks (same ``seed``).
    """
    return {name: held.report(resamples=resamples, seed=seed)
            for name, held in held_out(rows, predictors, seed=seed).items()}


def paired_differences(held: dict[str, HeldOutPredictions], selector: str, *,
                       metrics: Sequence[str] = ("top1_regret", "kendall_tau"), seed: int = 0,
                       resamples: int = 2000) -> dict[str, dict[str, dict[str, float]]]:
    """``{other predictor: {metric: paired difference}}``: per task, ``selector``'s metric minus
    the other's, averaged with a 95 % bootstrap interval (:func:`~.metrics.paired_difference`).
    For regret, below zero with the interval excluding zero means ``selector`` is
    significantly better; for τ, above zero."""
    if selector not in held:
        raise ConfigError(f"no predictor '{selector}' among: {', '.join(held)}")
    mine = held[selector].per_task(seed)
    out = {}
    for name, other in held.items():
        if name == selector:
            continue
        theirs = other.per_task(seed)
        out[name] = {m: paired_difference(mine[m], theirs[m], resamples=resamples, seed=seed) for m in metrics}
    return out
