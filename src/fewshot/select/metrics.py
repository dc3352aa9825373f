"""How good a model selection is: per-task metrics, averaged over tasks with bootstrap intervals.

Inputs are two ``(tasks, models)`` arrays: the models' true accuracies on each task and a
predictor's scores for them (higher = predicted better). Conventions, the same in every
function here:

* a NaN prediction means the selector **cannot score that model on that task** (e.g.
  leave-one-out at 1 shot, LEEP for a model without a source head): the model is not one
  of that selector's candidates on that task. A task where the selector scores no model
  is left out of its means (the report says on how many tasks each selector applied);
* the pick is the candidate with the highest prediction; **tied predictions are broken
  at random**, with random keys drawn once per (task, model) from a fixed seed, so a
  score that ties across models (SFDA saturating at 1) picks a random one of them, not
  the first column; the top 3 break ties the same way;
* "the true best" is any model (candidate or not) whose true accuracy equals the task's
  maximum: regret is measured against every model of the zoo;
* regret and accuracies are in the units of ``true`` (points when accuracies are in %);
* a task whose candidates all have the same true accuracy has no ranking to recover: its
  Kendall τ and weighted τ's are NaN and left out of their means; a predictor that gives
  every candidate the same score ranks nothing, so its τ on that task is 0.
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
    if not np.isfinite(true).all():
        raise DataError("true accuracies must be finite")
    if np.isnan(predicted).all():
        raise DataError("every prediction is NaN: the selector scores no model on any task")
    return true, predicted


def tiebreak_keys(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random keys that break ties between equal predictions, fixed by ``seed``."""
    return np.random.default_rng([int(seed), 7919]).random(shape)


def _order(predicted: np.ndarray, tiebreak: np.ndarray | None) -> np.ndarray:
    """Indices of the scored models, best first; ties in random (seeded) order."""
    keys = tiebreak if tiebreak is not None else tiebreak_keys(predicted.shape)
    scored = np.flatnonzero(~np.isnan(predicted))
    return scored[np.lexsort((keys[scored], -predicted[scored]))]


def _constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


def kendall_tau(true: np.ndarray, predicted: np.ndarray) -> float:
    """Kendall's τ-b (``scipy.stats.kendalltau``, which corrects for ties) of one task's scored models."""
    scored = ~np.isnan(predicted)
    true, predicted = true[scored], predicted[scored]
    if len(true) < 2 or _constant(true):
        return math.nan
    if _constant(predicted):
        return 0.0
    return float(stats.kendalltau(true, predicted).statistic)


WEIGHTINGS = ("both", "true", "predicted")


def weighted_tau(true: np.ndarray, predicted: np.ndarray, weigh_by: str = "both") -> float:
    """Weighted τ (Vigna, 2015, "A weighted correlation index for rankings with ties",
    arXiv:1404.3325; ``scipy.stats.weightedtau``) of one task's scored models.

    Swaps are weighted by the hyperbolic weigher 1/(r + 1) of a rank r (rank 0 = the best),
    so errors among the top models count most. Which ranking gives r is what the papers differ on:

    * ``"both"``: scipy's default (``rank=True``), the mean of the two weighted τ's with r
      from each ranking; what LogME (arXiv:2102.11005) and SFDA (arXiv:2207.09785) report;
    * ``"true"``: r from the true accuracies (predictions break ties), as Model Spider
      (arXiv:2306.03900) computes it: ``weightedtau(true, predicted, rank=None)``;
      swaps among the truly best models count most;
    * ``"predicted"``: r from the predictions (true accuracies break ties): swaps among the
      models a user would pick count most.
    """
    if weigh_by not in WEIGHTINGS:
        raise DataError(f"unknown weighting '{weigh_by}'; choose one of: {', '.join(WEIGHTINGS)}")
    scored = ~np.isnan(predicted)
    true, predicted = true[scored], predicted[scored]
    if len(true) < 2 or _constant(true):
        return math.nan
    if _constant(predicted):
        return 0.0
    if weigh_by == "both":
        return float(stats.weightedtau(true, predicted).statistic)
    first, second = (true, predicted) if weigh_by == "true" else (predicted, true)
    return float(stats.weightedtau(first, second, rank=None).statistic)


def weighted_tau_true(true: np.ndarray, predicted: np.ndarray) -> float:
    """Model Spider's weighted τ: :func:`weighted_tau` weighted by the true ranking."""
    return weighted_tau(true, predicted, "true")


def top1_regret(true: np.ndarray, predicted: np.ndarray, tiebreak: np.ndarray | None = None) -> float:
    """Best true accuracy minus the true accuracy of the pick (NaN when no model is scored)."""
    order = _order(predicted, tiebreak)
    return float(true.max() - true[order[0]]) if len(order) else math.nan


def relative_top1(true: np.ndarray, predicted: np.ndarray, tiebreak: np.ndarray | None = None) -> float:
    """True accuracy of the pick divided by the best true accuracy (1 = the best was picked)."""
    order = _order(predicted, tiebreak)
    if not len(order):
        return math.nan
    best = true.max()
    return float(true[order[0]] / best) if best > 0 else 1.0


def best_in_top3(true: np.ndarray, predicted: np.ndarray, tiebreak: np.ndarray | None = None) -> float:
    """1 if a truly best model is among the 3 highest predictions, else 0."""
    order = _order(predicted, tiebreak)
    return float(true[order[:3]].max() == true.max()) if len(order) else math.nan


PER_TASK = {
    "kendall_tau": kendall_tau,
    "weighted_tau": weighted_tau,
    "weighted_tau_true": weighted_tau_true,
    "top1_regret": top1_regret,
    "relative_top1": relative_top1,
    "best_in_top3": best_in_top3,
}
_TIES = ("top1_regret", "relative_top1", "best_in_top3")


def per_task(true: np.ndarray, predicted: np.ndarray, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Every metric of :data:`PER_TASK` on every task (NaN where undefined), ties broken by
    :func:`tiebreak_keys` of ``seed``."""
    true, predicted = _check(true, predicted)
    keys = tiebreak_keys(true.shape, seed)
    return {name: np.array([fn(t, p, k) if name in _TIES else fn(t, p)
                            for t, p, k in zip(true, predicted, keys)]) for name, fn in PER_TASK.items()}


def bootstrap_ci(values: np.ndarray, *, resamples: int = 2000, seed: int = 0,
                 transform=None, clusters=None) -> dict[str, float]:
    """Mean over tasks and its 95% percentile-bootstrap interval (tasks resampled with replacement).

    ``clusters`` (one label per value, e.g. each task's group) resamples whole clusters
    instead: a cluster bootstrap (Davison and Hinkley, 1997, §3.8), right when tasks of a
    cluster are not independent; with few clusters its interval is coarse but not
    falsely narrow. NaN values (tasks where the metric is undefined) are left out of every
    mean. ``transform`` maps each mean (e.g. ``math.sqrt`` to turn mean squared error into RMSE).
    """
    values = np.asarray(values, dtype=np.float64)
    transform = transform or (lambda v: v)
    defined = ~np.isnan(values)
    if not defined.any():
        return {"mean": math.nan, "low": math.nan, "high": math.nan}
    rng = np.random.default_rng(seed)
    if clusters is None:
        idx = rng.integers(0, len(values), size=(resamples, len(values)))
        sums = np.where(defined, values, 0.0)[idx].sum(1)
        counts = defined[idx].sum(1)
    else:
        labels = np.asarray(list(clusters), dtype=object)
        if labels.shape != values.shape:
            raise DataError(f"clusters must give one label per value: {labels.shape} for {values.shape}")
        _, code = np.unique(labels.astype(str), return_inverse=True)
        cluster_sums = np.bincount(code, weights=np.where(defined, values, 0.0))
        cluster_counts = np.bincount(code, weights=defined.astype(np.float64))
        idx = rng.integers(0, len(cluster_sums), size=(resamples, len(cluster_sums)))
        sums, counts = cluster_sums[idx].sum(1), cluster_counts[idx].sum(1)
    means = sums[counts > 0] / counts[counts > 0]
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(transform(values[defined].mean())), "low": float(transform(low)),
            "high": float(transform(high))}


def selection_report(true: np.ndarray, predicted: np.ndarray, *, accuracy_predictions: bool,
                     resamples: int = 2000, seed: int = 0, clusters=None) -> dict[str, dict[str, float]]:
    """Every selection metric over tasks: ``{metric: {"mean", "low", "high"}}`` (95% bootstrap CI).

    Metrics: ``kendall_tau``, ``weighted_tau`` (scipy's default), ``weighted_tau_true``
    (Model Spider's, see :func:`weighted_tau`), ``top1_regret``, ``relative_top1``,
    ``best_in_top3``, ``applies`` (the fraction of tasks where the selector scores at least
    one model), and, when ``accuracy_predictions`` (the predictions are accuracies in
    the units of ``true``), ``mse`` (mean over tasks of the mean squared error over models)
    and ``rmse`` (its square root, bootstrapped the same way). All metrics are resampled with
    the same task indices, from ``numpy.random.default_rng(seed)``; ``clusters`` (each
    task's group) resamples whole groups instead (:func:`bootstrap_ci`).
    """
    true, predicted = _check(true, predicted)
    metrics = per_task(true, predicted, seed=seed)
    boot = {"resamples": resamples, "seed": seed, "clusters": clusters}
    report = {name: bootstrap_ci(v, **boot) for name, v in metrics.items()}
    report["applies"] = bootstrap_ci((~np.isnan(predicted)).any(1).astype(np.float64), **boot)
    if accuracy_predictions:
        if not np.isfinite(predicted).all():
            raise DataError("accuracy predictions must be finite to compute their MSE")
        mse = ((predicted - true) ** 2).mean(1)
        report["mse"] = bootstrap_ci(mse, **boot)
        report["rmse"] = bootstrap_ci(mse, **boot, transform=math.sqrt)
    return report


def paired_difference(a: np.ndarray, b: np.ndarray, *, resamples: int = 2000, seed: int = 0,
                      clusters=None) -> dict[str, float]:
    """Mean over tasks of ``a - b`` (e.g. a selector's regret minus a baseline's on the same
    task) with its 95 % percentile-bootstrap interval, over the tasks where both are
    defined; ``tasks`` says how many. Pairing removes the variation between tasks, which
    is most of it, so it resolves differences the two marginal intervals cannot. ``clusters``
    (each task's group) resamples whole groups (:func:`bootstrap_ci`)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise DataError(f"paired values need the same tasks: shapes {a.shape} and {b.shape}")
    both = ~(np.isnan(a) | np.isnan(b))
    if not both.any():
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "tasks": 0}
    kept = None if clusters is None else np.asarray(list(clusters), dtype=object)[both]
    return {**bootstrap_ci(a[both] - b[both], resamples=resamples, seed=seed, clusters=kept),
            "tasks": int(both.sum())}
