"""Comparing model selectors: leave-one-group-out predictions and their reports.

:func:`leave_one_group_out` predicts every task with a fresh predictor trained on the
other groups only; :func:`compare` reports every predictor (the baselines of
:mod:`.baselines` and the :class:`~.metalearner.MetaLearner`s by default) with
:func:`~.metrics.selection_report`, and :func:`paired_differences` tests one against the
others task by task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .folds import group_folds
from .baselines import BestOnAverage, BestOnAverageInDomain, ColumnPredictor, Oracle, RandomPick, biggest_model
from .metalearner import MetaLearner
from .metrics import paired_difference, per_task, selection_report
from .table import Predictor, Row, check_rows, feature_columns, task_index



UNITS = ("task", "group")


@dataclass
class HeldOutPredictions:
    """A predictor's predictions for every task, each made without its group in training."""

    tasks: list
    groups: list
    models: list[str]
    true: np.ndarray  # (tasks, models)
    predicted: np.ndarray  # (tasks, models)
    accuracy_predictions: bool

    def report(self, unit: str = "task", **options) -> dict[str, dict[str, float]]:
        """:func:`~.metrics.selection_report`, resampling tasks (``unit="task"``) or whole groups
        (``"group"``: tasks of a group are not independent, so this is the honest interval)."""
        return selection_report(self.true, self.predicted, accuracy_predictions=self.accuracy_predictions,
                                clusters=self.clusters(unit), **options)

    def clusters(self, unit: str) -> list | None:
        """What the bootstrap resamples: ``None`` for tasks, each task's group for ``"group"``."""
        if unit not in UNITS:
            raise ConfigError(f"unknown resampling unit '{unit}'; choose one of: {', '.join(UNITS)}")
        return list(self.groups) if unit == "group" else None

    def per_task(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Each metric on each task (:func:`~.metrics.per_task`), ties broken with ``seed``."""
        return per_task(self.true, self.predicted, seed=seed)


def leave_one_group_out(rows: Sequence[Row], make_learner: Callable[[], Predictor],
                        related: Mapping[str, Iterable[str]] | None = None, *,
                        strict: bool = True) -> HeldOutPredictions:
    """Predict every task with a fresh learner trained on the other groups only.

    Folds come from :func:`~.folds.group_folds` over the rows' ``group``: no row of the
    held-out group, nor of a group ``related`` to it, is ever in training (``strict=False``
    leaves a group related to every other one unpredicted, NaN, instead of raising). Test
    rows reach ``predict`` without their ``accuracy`` (only a predictor with ``uses_truth``,
    the oracle, sees it). Every task must have the same set of models.
    """
    check_rows(rows, need_accuracy=True)
    tasks, index = task_index(rows)
    models = sorted({row["model"] for row in rows})
    column = {model: j for j, model in enumerate(models)}
    per_task = np.bincount(index, minlength=len(tasks))
    if (per_task != len(models)).any():
        t = int(np.argmax(per_task != len(models)))
        raise DataError(f"task {tasks[t]!r} has {per_task[t]} of the {len(models)} models; every task needs all")
    groups = [row["group"] for row in rows]
    folds = group_folds(groups, related, strict=strict)
    true = np.full((len(tasks), len(models)), np.nan)
    predicted = np.full_like(true, np.nan)
    cols = np.array([column[row["model"]] for row in rows])
    true[index, cols] = [float(row["accuracy"]) for row in rows]
    learner = None
    for train, test, _ in folds:
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
             seed: int = 0, related: Mapping[str, Iterable[str]] | None = None) -> dict[str, HeldOutPredictions]:
    """``{predictor name: HeldOutPredictions}`` of every predictor under leave-one-group-out,
    related groups held out together (default predictors: :func:`default_predictors`)."""
    predictors = default_predictors(rows, seed) if predictors is None else predictors
    return {name: leave_one_group_out(rows, make, related) for name, make in predictors.items()}


def compare(rows: Sequence[Row], predictors: dict[str, Callable[[], Predictor]] | None = None, *,
            seed: int = 0, resamples: int = 2000, related: Mapping[str, Iterable[str]] | None = None,
            unit: str = "task") -> dict[str, dict[str, dict[str, float]]]:
    """``{predictor name: selection_report}`` of every predictor under leave-one-group-out,
    ``related`` groups held out together.

    ``predictors`` maps names to factories of fresh predictors (default:
    :func:`default_predictors`). Every report resamples the same tasks or groups (``unit``,
    same ``seed``).
    """
    return {name: held.report(unit, resamples=resamples, seed=seed)
            for name, held in held_out(rows, predictors, seed=seed, related=related).items()}


def paired_differences(held: dict[str, HeldOutPredictions], selector: str, *,
                       metrics: Sequence[str] = ("top1_regret", "kendall_tau"), seed: int = 0,
                       resamples: int = 2000, unit: str = "task") -> dict[str, dict[str, dict[str, float]]]:
    """``{other predictor: {metric: paired difference}}``: per task, ``selector``'s metric minus
    the other's, averaged with a 95 % bootstrap interval (:func:`~.metrics.paired_difference`)
    over tasks or, ``unit="group"``, over whole groups.
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
        clusters = held[selector].clusters(unit)
        out[name] = {m: paired_difference(mine[m], theirs[m], resamples=resamples, seed=seed, clusters=clusters)
                     for m in metrics}
    return out


__all__ = ["UNITS", "HeldOutPredictions", "compare", "default_predictors", "held_out", "leave_one_group_out",
           "paired_differences"]
