"""Baselines that learn nothing across tasks: the floor every method must clear."""

from __future__ import annotations

import torch

from .base import Method, Predictor, class_means, register
from .protonet import prototype_logits


@register
class PixelNearestMean(Method):
    """Nearest class mean on raw pixels (squared Euclidean): no features, no training."""

    name = "pixel-ncm"
    learns_across_tasks = False
    needs_backbone = False

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)  # the pixels are its features

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        means = class_means(self.features(support_x), support_y, way)
        return lambda query_x: prototype_logits(self.features(query_x), means, "euclidean")
