"""What selection knows about a task and a model before adapting anything: meta-features and scores.

* **task meta-features** (``task.*``): way, shot, support size, channels, pixel
  statistics (mean, spread, ink), how separable the classes already are in pixel space
  (the task's difficulty before any model), and the task's input domain (one-hot
  ``task.domain.*``, when known);
* **model meta-features** (``model.*``): parameter count, feature width, number of
  source classes, architecture, objective and source data (one-hot, from the method,
  backbone and dataset registries), whether it was trained at all;
* **scores** (``score.*``): every transferability score of :mod:`fewshot.select.scores`
  on the model's features of the support set (LEEP and NCE from its source head, for
  models that have one over their source classes), and ``score.knn_view``: how often an
  augmented view of a support image lands nearest its own image's class (defined at any
  shot, unlike leave-one-out).

Images reach each model resized and converted to the input it takes (:func:`fit_images`).
"""

from __future__ import annotations

import copy
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.pretrained import HUB_ARCHITECTURE, Pretrained, built_in_architectures
from .index import Zoo, bn_mode

CANONICAL_SHAPE = (1, 28, 28)


def describe_task(support_x: torch.Tensor, support_y: torch.Tensor, domain: str | None = None) -> dict[str, float]:
    """Task meta-features of a support set (images in [0, 1]), before any model sees it.

    Pixel statistics are taken at one canonical size (grey, 28×28), so that they do not
    depend on the resolution a dataset or a user's folder happens to come in. ``domain``
    (a dataset name, e.g. ``"omniglot"``) sets the one-hot ``task.domain.*``.
    """
    x = fit_images(support_x.detach(), CANONICAL_SHAPE).to(torch.float64).flatten(1)
    y = support_y.detach()
    way = int(y.max()) + 1 if len(y) else 0
    counts = torch.bincount(y, minlength=way)
    means = torch.zeros(way, x.shape[1], dtype=torch.float64).index_add_(0, y, x) / counts.clamp_min(1)[:, None]
    spread = (x - x.mean(0)).norm(dim=1).mean()
    between = torch.pdist(means).mean() if way > 1 else torch.tensor(0.0)
    # Between-class distance of the class means relative to the examples' spread: high when
    # the classes are told apart by their pixels alone (an easy task for any model).
    separation = float(between / spread) if spread > 0 else 0.0
    return {
        "task.way": float(way), "task.shot": float(counts.min()) if way else 0.0, "task.support": float(len(y)),
        "task.channels": float(support_x.shape[1]),
        "task.pixel_mean": float(x.mean()), "task.pixel_std": float(x.std()) if x.numel() > 1 else 0.0,
        "task.ink": float((x > 0.5).double().mean()), "task.pixel_separation": separation,
        **{f"task.domain.{d}": float(d == domain) for d in _datasets()},
    }


def _datasets() -> list[str]:
    from ..data import DATASETS

    return sorted(DATASETS)


def _objectives() -> list[str]:
    from ..methods import METHODS

    return sorted(METHODS)


def describe_model(metadata: dict) -> dict[str, float]:
    """Model meta-features from a zoo model's metadata (missing facts count as 0).

    The one-hot names come from the registries (methods, backbones, datasets), so a new
    method or backbone gets its own column without editing this module.
    """
    objectives = [*_objectives(), "random-init"]
    # Built-in architectures only: a network registered in one Python session must not add a
    # column that another process writing the same meta-dataset lacks.
    architectures = [*built_in_architectures(), HUB_ARCHITECTURE]
    datasets = _datasets()
    objective = metadata.get("objective") if metadata.get("objective") in objectives else "other"
    architecture = metadata.get("architecture") if metadata.get("architecture") in architectures else "other"
    source = metadata.get("source") if isinstance(metadata.get("source"), dict) else {}
    dataset = source.get("dataset") if source.get("dataset") in datasets else ("none" if not source else "other")
    out = {
        "model.parameters": float(metadata.get("parameters") or 0),
        "model.log_parameters": float(np.log10(max(float(metadata.get("parameters") or 0), 1.0))),
        "model.feature_dim": float(metadata.get("feature_dim") or 0),
        "model.source_classes": float(source.get("num_classes") or 0),
        "model.trained": 0.0 if objective == "random-init" else 1.0,
        "model.image_side": float((metadata.get("image_shape") or [0, 0, 0])[-1]),
        "model.batch_norm_per_task": 1.0 if bn_mode(metadata) == "batch" else 0.0,
    }
    out.update({f"model.objective.{o}": float(o == objective) for o in (*objectives, "other")})
    out.update({f"model.arch.{a}": float(a == architecture) for a in (*architectures, "other")})
    out.update({f"model.source.{d}": float(d == dataset) for d in (*datasets, "none", "other")})
    return out


# -- one (task, model) pair ------------------------------------------------------------

def fit_images(x: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    """Images resized (bilinear, antialiased when shrinking) and converted (grey <-> RGB) to ``image_shape``."""
    channels, height, width = (int(s) for s in image_shape)
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(1, keepdim=True)
        else:
            raise ConfigError(f"cannot turn {x.shape[1]}-channel images into {channels}-channel ones")
    if tuple(x.shape[-2:]) != (height, width):
        shrink = height < x.shape[-2] or width < x.shape[-1]
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)
    return x.contiguous()


@torch.no_grad()
def extract(backbone: torch.nn.Module, x: torch.Tensor, bn: str) -> torch.Tensor:
    """Features of ``x``; ``bn="batch"`` normalises with the batch's own statistics on a copy
    (so the model's running statistics stay untouched)."""
    if bn == "batch":
        return copy.deepcopy(backbone).train()(x)
    backbone.eval()
    return backbone(x)


def source_probabilities(model: Pretrained, features: torch.Tensor) -> np.ndarray | None:
    """The source head's class probabilities, for models whose head covers their source
    classes (Baseline, Baseline++); None otherwise (e.g. MAML's head is per task)."""
    head, classes = model.head, (model.metadata.get("source") or {}).get("num_classes")
    spec = model.metadata.get("head") or {}
    if head is None or not classes or spec.get("out_features") != classes:
        return None
    with torch.no_grad():
        return torch.softmax(head(features).double(), dim=1).numpy()


def selection_row(model: Pretrained, support_x: torch.Tensor,
                  support_y: torch.Tensor) -> tuple[dict, dict, torch.Tensor]:
    """What selection knows about one model on one task: model meta-features and scores
    (``score.*``), their CPU costs, and the support features (reused by the probe)."""
    from .scores import compute_scores, view_nearest_neighbour

    bn = bn_mode(model.metadata)
    start = time.process_time()
    sx = fit_images(support_x, model.metadata["image_shape"])
    features = extract(model.backbone, sx, bn)
    views = extract(model.backbone, augmented_views(sx), bn)
    middle = time.process_time()
    scores = compute_scores(features.double().numpy(), support_y.numpy(), source_probabilities(model, features))
    scores["knn_view"] = view_nearest_neighbour(features.double().numpy(), views.double().numpy(), support_y.numpy())
    end = time.process_time()
    row = {**describe_model(model.metadata), **{f"score.{k}": v for k, v in scores.items()}}
    return row, {"cpu_features": middle - start, "cpu_scores": end - middle}, features


def augmented_views(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One slightly changed copy of each image (shifted by 1-2 pixels), seeded: the same
    views for every model, so their nearest-neighbour scores compare."""
    from ..data.augment import jitter

    generator = torch.Generator().manual_seed(seed)
    return torch.stack([jitter(image, generator) for image in x])


# -- a new task ----------------------------------------------------------------------

def describe_candidates(zoo: Zoo, support_x: torch.Tensor, support_y: torch.Tensor,
                        models: Sequence[str] | None = None, task: str = "new-task",
                        group: str = "new", domain: str | None = None) -> tuple[list[dict], dict[str, float]]:
    """The rows the builder would record for a new task's support set, minus the ground
    truth: one per zoo model. Returns them and each model's selection cost (CPU seconds)."""
    described = describe_task(support_x, support_y, domain)
    rows, costs = [], {}
    for name in models if models is not None else zoo.names():
        row, cost, _ = selection_row(zoo.load(name), support_x, support_y)
        rows.append({"task": task, "group": group, "model": name, **described, **row})
        costs[name] = cost["cpu_features"] + cost["cpu_scores"]
    return rows, costs


__all__ = ["CANONICAL_SHAPE", "augmented_views", "describe_candidates", "describe_model", "describe_task", "extract",
           "fit_images", "selection_row", "source_probabilities"]
