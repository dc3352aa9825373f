"""Prototypical Networks (Snell, Swersky and Zemel, NeurIPS 2017).

Each class is represented by the mean embedding of its support examples, its
prototype; a query is classified by a softmax over negative distances to the
prototypes. Meta-training minimises the query cross-entropy over episodes, which may
use more ways than testing (e.g. 60-way training for 5-way tests, as in the paper).

``normalize=True`` adds the feature normalisation of SimpleShot (Wang, Chao, Weinberger
and van der Maaten, 2019, "CL2N"): every feature is centred by subtracting the mean of
the episode's support features (the mean of its class means; SimpleShot subtracts the
base-class mean, which a meta-learner does not keep) and then L2-normalised;
prototypes are the means of the normalised support features. The logits are scaled by
a learned temperature (Oreshkin et al., 2018, TADAM's metric scaling): ``-α ||q - p||²``
from α = 10 with the Euclidean distance, ``α cos(q, p)`` with the cosine one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.episodes import Episode
from ..params import Boolean, OneOf, validate
from .base import Method, Predictor, class_means

DISTANCES = ("euclidean", "cosine")
OPTIONS = {"distance": OneOf(*DISTANCES), "normalize": Boolean()}


def prototype_logits(query: torch.Tensor, prototypes: torch.Tensor, distance: str, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Logits of ``query`` features against ``prototypes``: negative squared Euclidean
    distance, or cosine similarity times ``scale``."""
    if distance == "euclidean":
        # ||q||² - 2 q·p + ||p||², as one matmul rather than an (n, way, d) difference tensor.
        sq = query.pow(2).sum(1, keepdim=True) - 2 * query @ prototypes.T + prototypes.pow(2).sum(1)[None]
        return -sq
    return scale * F.normalize(query, dim=1) @ F.normalize(prototypes, dim=1).T


def centre_and_normalize(support: torch.Tensor, support_y: torch.Tensor, way: int,
                         query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SimpleShot's CL2N with the episode's support mean: centre, then L2-normalise."""
    centre = class_means(support, support_y, way).mean(0, keepdim=True)
    return F.normalize(support - centre, dim=1), F.normalize(query - centre, dim=1)


class ProtoNet(Method):
    """Prototypical Networks. ``distance`` is ``"euclidean"`` (squared, the paper's
    choice) or ``"cosine"`` with a learned temperature (initialised at 10).
    ``normalize=True`` centres and L2-normalises the features (SimpleShot's CL2N) and
    learns a temperature for either distance (see the module docstring)."""

    name = "protonet"

    def __init__(self, backbone: nn.Module, distance: str = "euclidean", normalize: bool = False):
        super().__init__(backbone)
        validate(self.name, {"distance": distance, "normalize": normalize}, OPTIONS)
        self.distance, self.normalize = distance, normalize
        self.scale = nn.Parameter(torch.tensor(10.0)) if distance == "cosine" or normalize else None

    def options(self) -> dict:
        # normalize is saved only when set, so the options of existing runs are unchanged.
        return {"distance": self.distance, **({"normalize": True} if self.normalize else {})}

    def _classify(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, way: int) -> torch.Tensor:
        if not self.normalize:
            return prototype_logits(query, class_means(support, support_y, way), self.distance,
                                    self.scale if self.scale is not None else 1.0)
        support, query = centre_and_normalize(support, support_y, way, query)
        prototypes = class_means(support, support_y, way)
        if self.distance == "euclidean":
            return self.scale * prototype_logits(query, prototypes, "euclidean")
        return prototype_logits(query, prototypes, "cosine", self.scale)

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        # One forward pass over support and query together, as in the paper's code.
        n = len(episode.support_x)
        features = self.backbone(torch.cat([episode.support_x, episode.query_x]))
        return self._classify(features[:n], episode.support_y, features[n:], episode.way)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        support = self.backbone(support_x)
        if self.normalize:
            return lambda query_x: self._classify(support, support_y, self.backbone(query_x), way)
        prototypes = class_means(support, support_y, way)
        scale = self.scale if self.scale is not None else 1.0
        return lambda query_x: prototype_logits(self.backbone(query_x), prototypes, self.distance, scale)
