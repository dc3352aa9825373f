"""The table model selection learns from: one dict row per (task, model).

* ``task``: the task's id; ``group``: what must never be split between training and test
  (the dataset, the alphabet ...); ``model``: the candidate model's name;
* numeric meta-features, named by prefix: ``task.*`` (way, shot, ...), ``model.*``
  (``model.parameters``, ...), ``score.*`` (transferability scores, see :mod:`.scores`);
  ``None`` or a missing key is a missing value (NaN, which gradient-boosted trees handle);
* ``accuracy``: the model's accuracy on the task (needed to fit, not to predict).

A predictor (:class:`Predictor`) has ``fit(rows)``, ``predict(rows) -> one number per
row`` (higher = better) and ``predicts_accuracy`` (whether those numbers are accuracies,
so that their MSE means something). This module checks the table and turns it into
matrices: :func:`feature_columns`, :func:`feature_matrix`, :func:`task_index` and the
per-task :func:`relative_scores`.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import numpy as np
from scipy import stats

from ..errors import ConfigError, DataError

Row = dict
FEATURE_PREFIXES = ("task.", "model.", "score.")


class Predictor(Protocol):
    """What :func:`~.comparison.leave_one_group_out` needs: ``fit``, ``predict`` (one number per row) and
    whether those numbers are accuracies."""

    predicts_accuracy: bool

    def fit(self, rows: Sequence[Row]) -> "Predictor": ...

    def predict(self, rows: Sequence[Row]) -> np.ndarray: ...


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


def task_index(rows: Sequence[Row]) -> tuple[list, np.ndarray]:
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


__all__ = ["FEATURE_PREFIXES", "Predictor", "Row", "check_rows", "feature_columns", "feature_matrix",
           "relative_scores", "task_index"]
