"""The one metric kit: accuracy, mean squared error and the 95% confidence interval.

Every score fewshot reports (training logs, validation, evaluation suites, transfer
cross-validation) comes from these functions, so a number means the same thing
wherever it is printed. Which score a task is judged by, and in which direction, is
its kind's (:mod:`fewshot.taskkind`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ("accuracy", "mse", "return")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of ``logits`` rows whose argmax is ``labels``."""
    return float((logits.argmax(dim=-1) == labels).float().mean()) * 100.0


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean squared error of ``outputs`` against ``targets`` (reshaped to match)."""
    return float(F.mse_loss(outputs, targets.to(outputs.dtype).view_as(outputs)))


def confidence_interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval, 1.96 · s / √n (s with n-1 dof)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()) if len(values) else math.nan, math.nan
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))
