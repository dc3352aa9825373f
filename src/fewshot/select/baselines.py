"""The baselines a model selector is judged against: random, best-on-average (overall and
within the task's domain), one column (the biggest model, one transferability score), and
the oracle that sees the true accuracies. Each has the :class:`~.table.Predictor` interface.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .table import Row, check_rows, feature_matrix, task_index


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
        tasks, index = task_index(rows)
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


__all__ = ["BestOnAverage", "BestOnAverageInDomain", "ColumnPredictor", "Oracle", "RandomPick", "biggest_model",
           "single_score"]
