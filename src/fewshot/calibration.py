"""Calibrated class probabilities: temperature scaling of a method's query logits.

Few-shot logits are often far from probabilities: Prototypical Networks' negative
squared distances are in the hundreds, so a plain softmax says 1.0 or 0.0. Temperature
scaling (Guo, Pleiss, Sun and Weinberger, ICML 2017, arXiv:1706.04599) divides every
logit by one scalar T > 0, fitted to minimise the negative log-likelihood of held-out
predictions; it changes no prediction (the argmax is the same), only the confidence.

Here T is fitted on the query predictions of a fixed suite of episodes, made exactly
as at test time (each method's ``test_mode``). The trainer fits it at the end of
training on the validation split's episodes (the training split's when there is
none, which is then said in the record) and keeps it in the run's state; an exported
model carries it. The expected calibration error (ECE, 15 equal-width confidence
bins, as in Guo et al.) is recorded before and after.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F

from .data.base import ClassDataset
from .data.episodes import EpisodeSampler
from .errors import ConfigError
from .methods.base import Method
from .taskkind import task_kind

BINS = 15
T_RANGE = (1e-3, 1e3)


def test_copy(method: Method) -> Method:
    """``method`` ready to predict as at test time: in eval mode, or, for a method that
    tests in train mode (BatchNorm on the task's own batch, the MAML family), a copy in
    train mode, so predicting never changes the original's running statistics."""
    if method.test_mode == "train":
        model = copy.deepcopy(method)
        model.train()
        return model
    method.eval()
    return method


def episode_logits(method: Method, sampler: Any, episodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query logits ``(n, way)`` and labels ``(n,)`` of episodes ``0 .. episodes-1`` of
    ``sampler``, predicted as :func:`fewshot.evaluate.evaluate` does."""
    if not task_kind(method).logits:
        raise ConfigError(f"{method.name} does {method.task}; only classification logits can be calibrated")
    was_training = method.training
    model = test_copy(method)
    logits, labels = [], []
    try:
        for ep in sampler.suite(episodes):
            with torch.no_grad():
                logits.append(model.adapt(ep.support_x, ep.support_y, ep.way)(ep.query_x).float())
            labels.append(ep.query_y)
    finally:
        method.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """ECE: the mean |accuracy - confidence| over equal-width confidence bins, weighted by size."""
    confidence, predicted = probabilities.max(1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    error = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            error += float(inside.double().mean() * (correct[inside].mean() - confidence[inside].double().mean()).abs())
    return error


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` (one-dimensional,
    convex in log T: L-BFGS from T = 1), clamped to [1e-3, 1e3]."""
    if logits.ndim != 2 or len(logits) != len(labels) or not len(labels):
        raise ConfigError(f"temperature fitting needs logits (n, way) and n labels, got {tuple(logits.shape)} "
                          f"and {tuple(labels.shape)}")
    logits = logits.detach().double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        t = 1.0 if F.cross_entropy(logits, labels) <= F.cross_entropy(logits / T_RANGE[1], labels) else T_RANGE[1]
    return min(max(t, T_RANGE[0]), T_RANGE[1])


def degenerate(logits: torch.Tensor, labels: torch.Tensor) -> str | None:
    """Why no temperature can be fitted to these predictions, or None: with one class per
    episode every prediction is certain, and when every prediction is right the
    likelihood only grows as T goes to 0 (the fit would stop at the clamp, 1e-3, and say
    nothing about new tasks)."""
    if logits.ndim == 2 and logits.shape[1] < 2:
        return "the validation episodes have one class each, so there is no confidence to calibrate"
    if len(labels) and bool((logits.argmax(1) == labels).all()):
        return (f"every one of the {len(labels)} validation predictions is correct, so the fit would only drive "
                "the temperature to 0; calibrate on harder or more episodes")
    return None


def calibration_sampler(data: ClassDataset, config: Any) -> tuple[EpisodeSampler, str | None]:
    """The suite a run's temperature is fitted on: its validation split when the data has
    it, else its training split, at the run's test way (fewer if the split has fewer
    classes), shot and query, seeded apart from the validation suite."""
    split = config.val_split if config.val_split in data.splits else config.train_split
    way = min(config.way, len(data.split_classes(split)))
    return EpisodeSampler(data, split, way, config.shot, config.query, seed=config.seed + 2), split


def calibrate(method: Method, sampler: Any, episodes: int, split: str | None = None) -> dict[str, Any]:
    """Fit the temperature of ``method`` on ``episodes`` episodes of ``sampler``; returns
    what is recorded: ``temperature``, NLL and ECE before and after, and the suite."""
    logits, labels = episode_logits(method, sampler, episodes)
    why = degenerate(logits, labels)
    if why:
        return {"temperature": 1.0, "fitted": False, "why": why, "split": split, "episodes": episodes,
                "way": sampler.way, "shot": sampler.shot}
    t = fit_temperature(logits, labels)
    before, after = F.softmax(logits.double(), 1), F.softmax(logits.double() / t, 1)
    return {"temperature": t, "fitted": True, "split": split, "episodes": episodes, "way": sampler.way, "shot": sampler.shot,
            "nll_before": float(F.nll_loss(before.clamp_min(1e-300).log(), labels)),
            "nll_after": float(F.nll_loss(after.clamp_min(1e-300).log(), labels)),
            "ece_before": expected_calibration_error(before, labels),
            "ece_after": expected_calibration_error(after, labels),
            "method": "temperature scaling (Guo et al., 2017, arXiv:1706.04599)"}


__all__ = ["calibrate", "calibration_sampler", "degenerate", "episode_logits", "expected_calibration_error", "fit_temperature", "test_copy"]
