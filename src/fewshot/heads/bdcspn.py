"""BD-CSPN prototype rectification (Liu, Song and Qin, ECCV 2020, "Prototype
Rectification for Few-Shot Learning", arXiv:1911.10713)."""

from __future__ import annotations

import torch

from ..params import Integer, Optional, Real
from .base import Head, Predictor, cosine, prototypes, register_head


def rectify_prototypes(support: torch.Tensor, labels: torch.Tensor, way: int, query: torch.Tensor,
                       temperature: float, top_z: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified prototypes ``(way, d)`` and the cross-class shift ``(1, d)`` of BD-CSPN.

    Cross-class bias: the queries are shifted by ``ξ = mean(support) - mean(query)``.
    Intra-class bias: the shifted queries are pseudo-labelled by cosine similarity to
    the support class means ``P``, added to the support set (all of them, or the
    ``top_z`` most similar per class), and each class's prototype becomes the weighted
    mean ``P'_k = Σ_i w_i x_i`` over its members with
    ``w_i = exp(ε cos(x_i, P_k)) / Σ_j exp(ε cos(x_j, P_k))`` (the paper's Eq. 5-6, ε = temperature).
    """
    shift = support.mean(0, keepdim=True) - query.mean(0, keepdim=True)
    shifted = query + shift
    centroids = prototypes(support, labels, way)
    similarity = cosine(shifted, centroids)
    score, pseudo = similarity.max(1)
    if top_z is not None:
        keep = torch.zeros_like(pseudo, dtype=torch.bool)
        for k in range(way):  # the top_z most similar queries of each pseudo-class
            members = (pseudo == k).nonzero().flatten()
            best = score[members].argsort(descending=True, stable=True)[:top_z]
            keep[members[best]] = True
        shifted_kept, pseudo = shifted[keep], pseudo[keep]
    else:
        shifted_kept = shifted
    members = torch.cat([support, shifted_kept])
    member_labels = torch.cat([labels, pseudo])
    # exp(ε cos) normalised within each class: a softmax over the class's members.
    logit = temperature * cosine(members, centroids).gather(1, member_labels[:, None]).squeeze(1)
    weight = (logit - logit.max()).exp()
    totals = torch.zeros(way, dtype=weight.dtype, device=weight.device).index_add_(0, member_labels, weight)
    weight = weight / totals[member_labels]
    rectified = torch.zeros_like(centroids).index_add_(0, member_labels, weight[:, None] * members)
    return rectified, shift


@register_head
class BDCSPN(Head):
    """Nearest prototype by cosine similarity after BD-CSPN's rectification
    (:func:`rectify_prototypes`); transductive.

    ``temperature`` is the paper's ε = 10. ``top_z``: how many pseudo-labelled queries per
    class join the support set (the paper adds the confidently pseudo-labelled ones;
    ``None``, the default, adds every query, as easyfsl does). The predictor scores the
    queries after the cross-class shift: ``ε cos(q + ξ, P'_k)``.
    """

    name = "bdcspn"
    transductive = True
    _parameter_constraints = {"temperature": Real(low=0, open_low=True), "top_z": Optional(Integer(low=1))}

    def __init__(self, temperature: float = 10.0, top_z: int | None = None):
        self.temperature = temperature
        self.top_z = top_z

    def _fit(self, support, labels, way, query) -> Predictor:
        rectified, shift = rectify_prototypes(support, labels, way, query, float(self.temperature), self.top_z)
        return lambda q: float(self.temperature) * cosine(q + shift, rectified)
