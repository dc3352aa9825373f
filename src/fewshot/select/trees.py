"""Gradient-boosted trees as data: a fitted scikit-learn ``HistGradientBoosting*`` model's trees
as plain arrays, and the prediction from those arrays alone.

A meta-learner that ships with fewshot must be stored as parameters, never as a pickle (a
pickle names code to run). :func:`export_trees` turns a fitted
``HistGradientBoostingRegressor`` (squared error) or binary ``HistGradientBoostingClassifier``
(log loss) into flat arrays, one entry per node of every tree; :class:`Trees` predicts from
them with NumPy, following scikit-learn's own rule (a missing value goes the side the split
learned, else ``x <= threshold`` goes left) and adding the trees in the same order, so its
predictions equal the fitted model's bit for bit. :func:`check_trees` checks arrays read
from a file before any is used: every child index points forward inside its own tree, so a
walk down a tree ends within the tree's size whatever the file holds.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy.special import expit

from ..errors import CheckpointError, ConfigError

#: The arrays of one model: its ``baseline`` (the raw prediction before any tree), where each
#: tree starts (``offsets``, one more than there are trees) and per node ``feature``,
#: ``threshold``, ``missing_left``, ``left``, ``right`` (tree-local indices), ``leaf`` and ``value``.
FIELDS = ("baseline", "offsets", "feature", "threshold", "missing_left", "left", "right", "leaf", "value")
KINDS = ("regressor", "binary-classifier")


def export_trees(estimator) -> tuple[str, dict[str, np.ndarray]]:
    """``(kind, arrays)`` of a fitted ``HistGradientBoostingRegressor`` (squared error) or
    binary ``HistGradientBoostingClassifier``; anything else is a ConfigError."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if isinstance(estimator, HistGradientBoostingClassifier):
        if len(estimator.classes_) != 2:
            raise ConfigError("only a two-class HistGradientBoostingClassifier can be stored as trees")
        kind = "binary-classifier"
    elif isinstance(estimator, HistGradientBoostingRegressor):
        if estimator.loss != "squared_error":
            raise ConfigError(f"only a squared-error regressor can be stored as trees, not loss={estimator.loss!r}")
        kind = "regressor"
    else:
        raise ConfigError(f"cannot store a {type(estimator).__name__} as trees")
    if estimator.n_trees_per_iteration_ != 1:
        raise ConfigError("only one tree per boosting iteration can be stored")
    # scikit-learn keeps the fitted trees in private attributes (``_predictors``,
    # ``_baseline_prediction``); tests/test_select_shipped.py checks the arrays still
    # predict exactly as the model does, so a change there fails loudly, not silently.
    nodes = [iteration[0].nodes for iteration in estimator._predictors]
    if any(n["is_categorical"].any() for n in nodes):
        raise ConfigError("trees with categorical splits cannot be stored")
    every = np.concatenate(nodes)
    arrays = {
        "baseline": np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(1),
        "offsets": np.concatenate([[0], np.cumsum([len(n) for n in nodes])]).astype(np.int64),
        "feature": every["feature_idx"].astype(np.int32),
        "threshold": every["num_threshold"].astype(np.float64),
        "missing_left": every["missing_go_to_left"].astype(np.uint8),
        "left": every["left"].astype(np.int32),
        "right": every["right"].astype(np.int32),
        "leaf": every["is_leaf"].astype(np.uint8),
        "value": every["value"].astype(np.float64),
    }
    return kind, arrays


def check_trees(arrays: Mapping[str, np.ndarray], n_features: int, what: str) -> None:
    """Raise a one-line CheckpointError unless ``arrays`` are trees over ``n_features`` columns
    that any input walks to a leaf (children point forward, within their own tree)."""
    missing = [f for f in FIELDS if f not in arrays]
    if missing:
        raise CheckpointError(f"{what}: the trees lack {', '.join(missing)}")
    dtypes = {"baseline": np.float64, "offsets": np.int64, "feature": np.int32, "threshold": np.float64,
              "missing_left": np.uint8, "left": np.int32, "right": np.int32, "leaf": np.uint8, "value": np.float64}
    for name, dtype in dtypes.items():
        a = arrays[name]
        if a.dtype != dtype or a.ndim != 1:
            raise CheckpointError(f"{what}: trees field {name} must be a 1-D {np.dtype(dtype).name} array, "
                                  f"got {a.dtype} of shape {a.shape}")
    offsets, n = arrays["offsets"], len(arrays["feature"])
    if len(arrays["baseline"]) != 1 or not np.isfinite(arrays["baseline"]).all():
        raise CheckpointError(f"{what}: the trees' baseline must be one finite number")
    if any(len(arrays[f]) != n for f in FIELDS[2:]):
        raise CheckpointError(f"{what}: the trees' node fields differ in length")
    if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) < 1).any():
        raise CheckpointError(f"{what}: the trees' offsets do not split the nodes into non-empty trees")
    tree = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    local, size = np.arange(n) - offsets[tree], np.diff(offsets)[tree]
    inner = arrays["leaf"] == 0
    if not set(np.unique(arrays["leaf"]).tolist()) <= {0, 1} or not set(
            np.unique(arrays["missing_left"]).tolist()) <= {0, 1}:
        raise CheckpointError(f"{what}: the trees' leaf and missing_left flags must be 0 or 1")
    for child in ("left", "right"):
        c = arrays[child][inner]
        if ((c <= local[inner]) | (c >= size[inner])).any():
            raise CheckpointError(f"{what}: a tree node's {child} child is not a later node of the same tree")
    feature = arrays["feature"][inner]
    if ((feature < 0) | (feature >= n_features)).any():
        raise CheckpointError(f"{what}: a tree splits on a column outside the {n_features} it takes")
    if np.isnan(arrays["threshold"][inner]).any() or not np.isfinite(arrays["value"][~inner]).all():
        raise CheckpointError(f"{what}: a tree has a NaN threshold or a non-finite leaf value")


class Trees:
    """Prediction from :func:`export_trees`' arrays (checked with :func:`check_trees`), with
    the ``predict`` (and for a classifier ``predict_proba``) of the scikit-learn model."""

    def __init__(self, kind: str, arrays: Mapping[str, np.ndarray], n_features: int, what: str = "trees"):
        if kind not in KINDS:
            raise CheckpointError(f"{what}: unknown kind of trees {kind!r}; fewshot reads {', '.join(KINDS)}")
        check_trees(arrays, n_features, what)
        self.kind, self.n_features = kind, n_features
        self.arrays = {f: np.asarray(arrays[f]) for f in FIELDS}
        offsets = self.arrays["offsets"]
        start = np.repeat(offsets[:-1], np.diff(offsets))
        # Global child indices (the file's are local to each tree).
        self._left = self.arrays["left"].astype(np.int64) + start
        self._right = self.arrays["right"].astype(np.int64) + start
        self._depth = int(np.diff(offsets).max())  # a walk never takes more steps than a tree has nodes

    def raw(self, x: np.ndarray) -> np.ndarray:
        """The baseline plus every tree's leaf value, added tree by tree (scikit-learn's order)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ConfigError(f"the trees take {self.n_features} columns, got an array of shape {x.shape}")
        a = self.arrays
        node = np.broadcast_to(a["offsets"][:-1], (len(x), len(a["offsets"]) - 1)).copy()
        rows = np.arange(len(x))[:, None]
        for _ in range(self._depth):
            inner = a["leaf"][node] == 0
            if not inner.any():
                break
            value = x[rows, a["feature"][node]]
            left = np.where(np.isnan(value), a["missing_left"][node] == 1, value <= a["threshold"][node])
            node = np.where(inner, np.where(left, self._left[node], self._right[node]), node)
        values = a["value"][node]
        out = np.zeros(len(x)) + a["baseline"][0]
        for t in range(values.shape[1]):
            out += values[:, t]
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "regressor":
            return self.raw(x)
        return (self.raw(x) > 0).astype(bool)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.kind != "binary-classifier":
            raise ConfigError("a regressor's trees give no probabilities")
        p = expit(self.raw(x))
        return np.column_stack([1 - p, p])


__all__ = ["FIELDS", "KINDS", "Trees", "check_trees", "export_trees"]
