"""Prototypical Networks (Snell, Swersky and Zemel, NeurIPS 2017).

Each class is represented by the mean embedding of its support examples, its
prototype; a query is classified by a softmax over negative distances to the
prototypes. Meta-training minimises the query cross-entropy over episodes, which may
use more ways than testing (e.g. 60-way training for 5-way tests, as in the paper).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.episodes import Episode
from ..errors import ConfigError
from .base import Method, Predictor, accuracy, class_means

DISTANCES = ("euclidean", "cosine")


def prototype_logits(query: torch.Tensor, prototypes: torch.Tensor, distance: str, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Logits of ``query`` features against ``prototypes``: negative squared Euclidean
    distance, or cosine similarity times ``scale``."""
    if distance == "euclidean":
        # ||q||² - 2 q·p + ||p||², as one matmul rather than an (n, way, d) difference tensor.
        sq = query.pow(2).sum(1, keepdim=True) - 2 * query @ prototypes.T + prototypes.pow(2).sum(1)[None]
        return -sq
    return scale * F.normalize(query, dim=1) @ F.normalize(prototypes, dim=1).T


class ProtoNet(Method):
    """Prototypical Networks. ``distance`` is ``"euclidean"`` (squared, the paper's
    choice) or ``"cosine"`` with a learned temperature (initialised at 10)."""

    name = "protonet"

    def __init__(self, backbone: nn.Module, distance: str = "euclidean"):
        super().__init__()
        if distance not in DISTANCES:
            raise ConfigError(f"unknown distance '{distance}'; choose one of: {', '.join(DISTANCES)}")
        self.backbone, self.distance = backbone, distance
        self.scale = nn.Parameter(torch.tensor(10.0)) if distance == "cosine" else None

    def options(self) -> dict:
        return {"distance": self.distance}

    def _logits(self, support_x, support_y, query_x, way) -> torch.Tensor:
        # One forward pass over support and query together, as in the paper's code.
        features = self.backbone(torch.cat([support_x, query_x]))
        support, query = features[: len(support_x)], features[len(support_x):]
        return prototype_logits(query, class_means(support, support_y, way), self.distance,
                                self.scale if self.scale is not None else 1.0)

    def loss(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, dict[str, float]]:
        losses, accs = [], []
        for ep in episodes:
            logits = self._logits(ep.support_x, ep.support_y, ep.query_x, ep.way)
            losses.append(F.cross_entropy(logits, ep.query_y))
            accs.append(accuracy(logits, ep.query_y))
        return torch.stack(losses).mean(), {"accuracy": sum(accs) / len(accs)}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        prototypes = class_means(self.backbone(support_x), support_y, way)
        scale = self.scale if self.scale is not None else 1.0
        return lambda query_x: prototype_logits(self.backbone(query_x), prototypes, self.distance, scale)
