"""Labels of a support set: any hashable values, checked once, ordered as scikit-learn orders them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import DataError


def check_labels(y: Any, n: int) -> list:
    """``y`` as a list of ``n`` hashable labels; anything else is a one-line :class:`DataError`."""
    if isinstance(y, (str, bytes)) or not hasattr(y, "__len__"):
        raise DataError(f"labels: expected a sequence of {n} labels, got {type(y).__name__}")
    labels = y.tolist() if isinstance(y, (np.ndarray, torch.Tensor)) else list(y)
    if len(labels) != n:
        raise DataError(f"labels: {n} images but {len(labels)} labels; give one label per image")
    for label in labels:
        try:
            hash(label)
        except TypeError:
            raise DataError(f"labels must be hashable (str, int, ...), got {type(label).__name__}") from None
        if isinstance(label, float) and math.isnan(label):
            raise DataError("labels: NaN is not a label; give every image a class")
    return labels


def ordered(labels: list) -> list:
    """Distinct labels, sorted when they can be (scikit-learn's order), else in order of appearance."""
    distinct = list(dict.fromkeys(labels))
    try:
        return sorted(distinct)
    except TypeError:
        return distinct


def label_array(classes: list) -> np.ndarray:
    """``classes`` as scikit-learn's ``classes_``: a typed array when they share one plain type, else objects."""
    kinds = {type(c) for c in classes}
    if len(kinds) == 1 and kinds <= {str, int, float, bool}:
        return np.asarray(classes)
    out = np.empty(len(classes), dtype=object)
    out[:] = classes
    return out


def json_labels(classes: np.ndarray) -> list:
    """``classes_`` as JSON values (str, int, float, bool), for a saved model; others are refused."""
    values = [c.item() if isinstance(c, np.generic) else c for c in classes.tolist()]
    for value in values:
        if not isinstance(value, (str, int, float, bool)):
            raise DataError(f"a saved model keeps its classes as JSON: label {value!r} ({type(value).__name__}) is "
                            "not a str, int, float or bool; fit with such labels to save")
    return values


__all__ = ["check_labels", "json_labels", "label_array", "ordered"]
