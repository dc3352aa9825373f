"""How far to trust a predicted accuracy: held-out errors of the meta-learner, per model.

The meta-learner is refitted leave-one-group-out on the meta-dataset, so every task's
prediction comes from a learner that never saw its group; the residuals (predicted −
true accuracy) of those predictions give, per model, the RMSE and a calibrated interval:
the empirical 5 % and 95 % quantiles of the residuals (split-conformal, Vovk et al. 2005;
Angelopoulos & Bates 2021, arXiv:2107.07511), so that about 90 % of new tasks of the
same kind fall within ``predicted − q95 .. predicted − q05``. Cached in the meta-dataset's
store, keyed by what they depend on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

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


__all__ = ["COVERAGE", "prediction_errors", "prediction_intervals"]
