"""The ground truth of model selection: a model's query accuracy after adapting it to a task.

``"linear-probe"``: scikit-learn's logistic regression on frozen features
(:func:`~fewshot.methods.transfer.logistic_probe`); ``"finetune"``:
:class:`~fewshot.methods.transfer.FineTune` (its defaults: 50 steps of SGD on the whole
network); ``"lp-ft"``: the same from a linear probe's head (Kumar et al., 2022,
arXiv:2202.10054). :func:`cross_validated_accuracy` measures the same on a support set
alone, with the fold loop of :func:`fold_accuracy`.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..errors import ConfigError
from ..models.pretrained import Pretrained
from .index import bn_mode
from .metafeatures import extract, fit_images

TARGETS = ("finetune", "linear-probe")  # the ground truths a meta-store records
ADAPTATIONS = (*TARGETS, "lp-ft")  # what measure() runs


def predict(model: Pretrained, support_x: torch.Tensor, support_y: torch.Tensor, eval_x: torch.Tensor, way: int,
            target: str, finetune: dict | None = None,
            support_features: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """The labels ``model`` predicts for ``eval_x`` after adapting to the support set, and
    the CPU seconds of both.

    ``target="linear-probe"``: logistic regression on frozen features (the defaults of
    FineTune's linear probe); ``"finetune"``: :func:`~fewshot.methods.transfer.wrap` with
    strategy ``finetune`` and ``finetune`` options (its defaults otherwise); ``"lp-ft"``:
    the same with strategy ``lp-ft``.
    """
    from ..methods.transfer import logistic_probe, wrap

    bn = bn_mode(model.metadata)
    shape = model.metadata["image_shape"]
    start = time.process_time()
    sx, ex = fit_images(support_x, shape), fit_images(eval_x, shape)
    if target == "linear-probe":
        features = support_features if support_features is not None else extract(model.backbone, sx, bn)
        head = logistic_probe(features, support_y, way)
        with torch.no_grad():
            logits = head(extract(model.backbone, ex, bn))
    elif target in ("finetune", "lp-ft"):
        method = wrap(model, target, bn=bn, **(finetune or {}))
        predictor = method.adapt(sx, support_y, way)
        with torch.no_grad():
            logits = predictor(ex)
    else:
        raise ConfigError(f"unknown adaptation '{target}'; choose one of: {', '.join(ADAPTATIONS)}")
    return logits.argmax(1), time.process_time() - start


def accuracy_of(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy (%) of predicted labels."""
    return float((predicted == labels).double().mean()) * 100.0


def measure(model: Pretrained, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
            query_y: torch.Tensor, way: int, target: str, finetune: dict | None = None,
            support_features: torch.Tensor | None = None) -> tuple[float, float]:
    """Query accuracy (%) after adapting ``model`` to the support set (:func:`predict`), and its CPU seconds."""
    predicted, seconds = predict(model, support_x, support_y, query_x, way, target, finetune, support_features)
    return accuracy_of(predicted, query_y), seconds


def cross_validated_accuracy(model: Pretrained, support_x: torch.Tensor, support_y: torch.Tensor, way: int,
                             target: str = "finetune", finetune: dict | None = None,
                             folds: int = 5) -> tuple[float, float]:
    """Accuracy (%) of adapting ``model``, measured on the support set alone by stratified
    folds (:func:`fold_accuracy`), and its CPU seconds. Slightly pessimistic: each fold
    adapts on part of the support set."""
    return fold_accuracy(lambda tx, ty, hx, hy: measure(model, tx, ty, hx, hy, way, target, finetune),
                         support_x, support_y, folds)


def fold_accuracy(adapt_and_score: Callable[..., tuple[float, float]], support_x: torch.Tensor,
                  support_y: torch.Tensor, folds: int = 5) -> tuple[float, float]:
    """Accuracy (%) on held-out support examples, pooled over the stratified folds of
    :func:`~fewshot.methods.transfer.cv_folds` (at 1 shot, leave-one-out with an augmented
    copy of the held-out example), and the CPU seconds: ``adapt_and_score(train_x, train_y,
    held_x, held_y) -> (accuracy %, CPU seconds)`` runs each fold."""
    from ..data.augment import jitter
    from ..methods.transfer import cv_folds

    generator = torch.Generator().manual_seed(0)
    correct, total, cpu = 0.0, 0, 0.0
    for train, held in cv_folds(support_y, folds):
        real, copies = train[train >= 0], [-1 - int(i) for i in train[train < 0]]
        tx = torch.cat([support_x[real]] + [jitter(support_x[i], generator)[None] for i in copies])
        ty = torch.cat([support_y[real]] + [support_y[i:i + 1] for i in copies])
        accuracy, seconds = adapt_and_score(tx, ty, support_x[held], support_y[held])
        correct += accuracy * len(held)
        total += len(held)
        cpu += seconds
    return correct / max(total, 1), cpu


__all__ = ["ADAPTATIONS", "TARGETS", "accuracy_of", "cross_validated_accuracy", "fold_accuracy", "measure",
           "predict"]
