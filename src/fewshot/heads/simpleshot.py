"""SimpleShot nearest centroid (Wang, Chao, Weinberger and van der Maaten, 2019, arXiv:1911.04623)."""

from __future__ import annotations

import torch

from ..params import OneOf
from .base import NORMS, Head, Predictor, normalizer, prototypes, register_head, squared_distances


@register_head
class NearestCentroid(Head):
    """Nearest class mean under SimpleShot's feature transform, Euclidean distance.

    ``norm``: ``UN`` (features as they are), ``L2N`` (L2-normalised) or ``CL2N`` (centred,
    then L2-normalised; the paper's best). SimpleShot centres on the mean feature of the
    base (training) classes, given with :meth:`fit_base`; without it this head centres on
    the episode's support mean (the mean of its class means), which is what a user
    without the base features can do and what ``protonet normalize=true`` does.
    Logits: ``-||T(q) - c_k||²`` with ``c_k`` the mean of the transformed support features
    of class ``k`` (the paper's rule, nearest centroid; as logits, a softmax-ready score).
    """

    name = "simpleshot"
    transductive = False
    uses_base_features = True
    _parameter_constraints = {"norm": OneOf(*NORMS)}

    def __init__(self, norm: str = "CL2N"):
        self.norm = norm
        self.base_mean: torch.Tensor | None = None

    def fit_base(self, base_features: torch.Tensor) -> "NearestCentroid":
        self.base_mean = base_features.mean(0, keepdim=True).detach()
        return self

    def _fit(self, support, labels, way, query) -> Predictor:
        centre = self.base_mean if self.base_mean is not None else prototypes(support, labels, way).mean(0, keepdim=True)
        transform = normalizer(self.norm, centre)
        centroids = prototypes(transform(support), labels, way)
        return lambda q: -squared_distances(transform(q), centroids)
