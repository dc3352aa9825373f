"""Baselines that learn nothing across tasks: the floor every method must clear."""

from __future__ import annotations

import torch

from .base import Method, Predictor, class_means
from .protonet import prototype_logits


class PixelNearestMean(Method):
    """Nearest class mean on raw pixels (squared Euclidean): no features, no training."""

    name = "pixel-ncm"
    trainable = False

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        means = class_means(support_x.flatten(1), support_y, way)
        return lambda query_x: prototype_logits(query_x.flatten(1), means, "euclidean")
