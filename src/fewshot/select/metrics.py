"""How good a model selection is: per-task metrics, averaged over tasks with bootstrap intervals.

Inputs are two ``(tasks, models)`` arrays: the models' true accuracies on each task and a
predictor's scores for them (higher = predicted better). Conventions, the same in every
function here:

* the pick is the model with the highest prediction; tied predictions go to the first of
  them in column order (``numpy.argmax``), and the top 3 break ties the same way;
* "the true best" is any model whose true accuracy equals the task's maximum;
* regret and accuracies are in the units of ``true`` (points when accuracies are in %);
* a task whose models all have the same true accuracy has no ranking to recover: its
  Kendall τ and weighted τ are NaN and left out of their means; a predictor that gives
  every model the same score ranks nothing, so its τ on that task is 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ..errors import DataError


def _check(true: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true, predicted = np.asarray(true, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if true.ndim != 2 or true.shape != predicted.shape or true.shape[1] < 2 or len(true) < 1:
        raise DataError(f"true and predicted must both be (tasks, models) arrays with at least 2 models; "
                        f"got shapes {true.shape} and {predicted.shape}")
    if not (np.isfinite(true).all() and not np.isnan(predicted).any()):
        raise DataError("true accuracies must be finite and predictions must not be NaN")
    return true, predicted


def _constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


def kendall_tau(true: np.ndarray, predicted: np.ndarray) -> float:
    """Kendall's τ-b (``scipy.stats.kendalltau``, which corrects for ties) of one task's models."""
    if _constant(true):
        return math.nan
    if _constant(predicted):
        return 0.0
    return float(stats.kendalltau(true, predicted).statistic)


def weighted_tau(true: np.ndarray, predicted: np.ndarray) -> float:
    """Weighted τ (Vigna, 2015; ``scipy.stats.weightedtau``) of one task's models.

    Swaps are weighted by the hyperbolic weigher 1/(r + 1) of the rank r given by the
    predictions (``rank=None`` with the predictions first: the predicted best has rank 0,
    true accuracies break ties), so errors among the models a user would pick count most.
    """
    if _constant(true):
        return math.nan
    if _constant(predicted):
        return 0.0
    return float(stats.weightedtau(predicted, true, rank=None).statistic)


def top1_regret(true: np.ndarray, predicted: np.ndarray) -> float:
    """Best true accuracy minus the true accuracy of the predicted best model."""
    return float(true.max() - true[np.argmax(predicted)])


def relative_top1(true: np.ndarray, predicted: np.ndarray) -> float:
    """True accuracy of the pick divided by the best true accuracy (1 = the best was picked)."""
    best = true.max()
    return float(true[np.argmax(predicted)] / best) if best > 0 else 1.0


def best_in_top3(true: np.ndarray, predicted: np.ndarray) -> float:
    """1 if a truly best model is among the 3 highest predictions, else 0."""
    top = np.argsort(-predicted, kind="stable")[:3]
    return float(true[top].max() == true.max())


PER_TASK = {
    "kendall_tau": kendall_tau,
    "weighted_tau": weighted_tau,
    "top1_regret": top1_regret,
    "relative_top1": relative_top1,
    "best_in_top3": best_in_top3,
}


def bootstrap_ci(values: np.ndarray, *, resamples: int = 2000, seed: int = 0,
                 transform=None) -> dict[str, float]:
    """Mean over tasks and its 95% percentile-bootstrap interval (tasks resampled with replacement).

    NaN values (tasks where the metric is undefined) are left out of every mean. ``transform``
    maps each mean (e.g. ``math.sqrt`` to turn mean squared error into RMSE).
    """
    values = np.asarray(values, dtype=np.float64)
    transform = transform or (lambda v: v)
    defined = ~np.isnan(values)
    if not defined.any():
        return {"mean": math.nan, "low": math.nan, "high": math.nan}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    sums = np.where(defined, values, 0.0)[idx].sum(1)
    counts = defined[idx].sum(1)
    means = sums[counts > 0] / counts[counts > 0]
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(transform(values[defined].mean())), "low": float(transform(low)),
            "high": float(transform(high))}


def selection_report(true: np.ndarray, predicted: np.ndarray, *, accuracy_predictions: bool,
                     resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Every selection metric over tasks: ``{metric: {"mean", "low", "high"}}`` (95% bootstrap CI).

    Metrics: ``kendall_tau``, ``weighted_tau``, ``top1_regret``, ``relative_top1``,
    ``best_in_top3``, and, when ``accuracy_predictions`` (the predictions are accuracies in
    the units of ``true``), ``mse`` (mean over tasks of the mean squared error over models)
    and ``rmse`` (its square root, bootstrapped the same way). All metrics are resampled with
    the same task indices, from ``numpy.random.default_rng(seed)``.
    """
    true, predicted = _check(true, predicted)
    per_task = {name: np.array([fn(t, p) for t, p in zip(true, predicted)]) for name, fn in PER_TASK.items()}
    report = {name: bootstrap_ci(v, resamples=resamples, seed=seed) for name, v in per_task.items()}
    if accuracy_predictions:
        if not np.isfinite(predicted).all():
            raise DataError("accuracy predictions must be finite to compute their MSE")
        mse = ((predicted - true) ** 2).mean(1)
        report["mse"] = bootstrap_ci(mse, resamples=resamples, seed=seed)
        report["rmse"] = bootstrap_ci(mse, resamples=resamples, seed=seed, transform=math.sqrt)
    return report
