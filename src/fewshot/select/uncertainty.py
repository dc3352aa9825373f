"""How far to trust a predicted accuracy: held-out errors of the meta-learner, per model.

The meta-learner is refitted leave-one-group-out on the meta-dataset, so every task's
prediction comes from a learner that never saw its group; the residuals (predicted −
true accuracy) of those predictions give, per model, the RMSE and a calibrated interval:
the empirical 5 % and 95 % quantiles of the residuals (split-conformal, Vovk et al. 2005;
Angelopoulos & Bates 2021, arXiv:2107.07511), so that about 90 % of new tasks of the
same kind fall within ``predicted − q95 .. predicted − q05``. Cached in the meta-dataset's
store, keyed by what they depend on.

A learner used on another zoo (the shipped one, :mod:`.shipped`) predicts for models it has
never seen: :func:`unseen_model_intervals` holds out a fold of the models together with each
task group, and pools the residuals of the held-out models on the held-out groups into one
interval for any model.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .folds import group_folds
from .metastore import MetaStore

#: The coverage of :func:`prediction_errors`' intervals.
COVERAGE = 0.9


def prediction_intervals(store: MetaStore, rows: Sequence[dict], make_learner, key: str) -> dict[str, dict]:
    """``{model: {"rmse", "low", "high", "coverage"}}``: each model's held-out RMSE of
    predicted accuracy and the residual quantiles of a 90 % interval (the true accuracy is
    within ``[predicted - high, predicted - low]`` for about 90 % of held-out tasks).
    Cached in ``store`` under ``key``."""
    from .comparison import leave_one_group_out

    key = f"intervals/{key}"
    cached = store.cached(key)
    if isinstance(cached, dict) and all(isinstance(v, dict) for v in cached.values()):
        return cached
    held = leave_one_group_out(list(rows), make_learner)
    residuals = held.predicted - held.true
    tail = (1 - COVERAGE) / 2
    errors = {}
    for j, model in enumerate(held.models):
        r = residuals[:, j][~np.isnan(residuals[:, j])]
        errors[model] = {"rmse": float(np.sqrt((r ** 2).mean())), "low": float(np.quantile(r, tail)),
                         "high": float(np.quantile(r, 1 - tail)), "coverage": COVERAGE}
    store.cache(key, errors)
    return errors


def prediction_errors(store: MetaStore, rows: Sequence[dict], make_learner, key: str) -> dict[str, float]:
    """Each model's RMSE of held-out predicted accuracy (see :func:`prediction_intervals`)."""
    return {model: e["rmse"] for model, e in prediction_intervals(store, rows, make_learner, key).items()}


def unseen_model_intervals(rows: Sequence[dict], make_learner: Callable,
                           related: Mapping[str, Iterable[str]] | None = None, model_folds: int = 3) -> dict:
    """``{"rmse", "low", "high", "coverage", "residuals"}`` of predictions for models and task
    groups the learner never saw, pooled over models: for every task-group fold
    (:func:`~.folds.group_folds`, related groups held out together) and every fold of the
    models (every ``model_folds``-th of them, sorted by name), a learner trained on the other
    groups *without those models* predicts the held-out group's tasks, shown with the
    held-out models only (as a zoo of new models is); their residuals (predicted − true accuracy) give the RMSE and the 5 % and 95 % quantiles."""
    from .table import check_rows

    check_rows(rows, need_accuracy=True)
    models = sorted({r["model"] for r in rows})
    if not 2 <= model_folds <= len(models):
        raise ConfigError(f"holding out models needs 2 to {len(models)} model folds, got {model_folds}")
    residuals = []
    for train, test, _ in group_folds([r["group"] for r in rows], related):
        for k in range(model_folds):
            held = set(models[k::model_folds])
            learner = make_learner().fit([rows[i] for i in train if rows[i]["model"] not in held])
            # Each held-out task is shown with the held-out models only, as a user's zoo is
            # shown: every model in it is new to the learner.
            new = [i for i in test if rows[i]["model"] in held]
            shown = [{key: v for key, v in rows[i].items() if key != "accuracy"} for i in new]
            predicted = np.asarray(learner.predict_accuracy(shown), dtype=np.float64)
            residuals += [p - rows[i]["accuracy"] for p, i in zip(predicted, new)]
    r = np.asarray(residuals)
    tail = (1 - COVERAGE) / 2
    return {"rmse": float(np.sqrt((r ** 2).mean())), "low": float(np.quantile(r, tail)),
            "high": float(np.quantile(r, 1 - tail)), "coverage": COVERAGE, "residuals": int(len(r))}


__all__ = ["COVERAGE", "prediction_errors", "prediction_intervals", "unseen_model_intervals"]
