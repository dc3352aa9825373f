"""TIM-GD, transductive information maximisation by gradient descent (Boudiaf, Ziko,
Rony, Dolz, Piantanida and Ben Ayed, NeurIPS 2020, arXiv:2008.11297)."""

from __future__ import annotations

import torch

from ..params import Integer, Real
from .base import Head, Predictor, one_hot, prototypes, register_head, squared_distances
import torch.nn.functional as F


@register_head
class TIM(Head):
    """TIM-GD on L2-normalised features.

    Class weights ``W`` (initialised at the support prototypes) give
    ``p(k|x) = softmax_k(-τ/2 ||x - w_k||²)`` (τ = ``temperature``, 15 in the paper's
    code). ``W`` minimises, with Adam (lr ``lr`` = 1e-4, ``steps`` = 1000 iterations:
    the paper's TIM-GD settings; the authors' code's config defaults to 150 iterations),

        λ·CE(support) − (H(Y_Q) − α·H(Y_Q|X_Q))

    with the support cross-entropy ``CE``, the marginal entropy of the mean query
    prediction ``H(Y_Q)`` and the mean conditional entropy of the query predictions
    ``H(Y_Q|X_Q)``; the paper's weights: λ = ``ce_weight`` = 0.1, ``marginal_weight`` = 1,
    α = ``conditional_weight`` = 0.1. Transductive: the predictor scores the queries
    with the optimised weights.
    """

    name = "tim"
    transductive = True
    _parameter_constraints = {"steps": Integer(low=0, high=100_000), "lr": Real(low=0, open_low=True),
                              "temperature": Real(low=0, open_low=True), "ce_weight": Real(low=0),
                              "marginal_weight": Real(low=0), "conditional_weight": Real(low=0)}

    def __init__(self, steps: int = 1000, lr: float = 1e-4, temperature: float = 15.0, ce_weight: float = 0.1,
                 marginal_weight: float = 1.0, conditional_weight: float = 0.1):
        self.steps = steps
        self.lr = lr
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.marginal_weight = marginal_weight
        self.conditional_weight = conditional_weight

    def _fit(self, support, labels, way, query) -> Predictor:
        support, query = F.normalize(support.detach(), dim=1), F.normalize(query.detach(), dim=1)
        tau = float(self.temperature)
        weights = prototypes(support, labels, way).clone().requires_grad_(True)
        targets = one_hot(labels, way, support.dtype)
        optimizer = torch.optim.Adam([weights], lr=float(self.lr))
        with torch.enable_grad():
            for _ in range(int(self.steps)):
                log_p_support = (-tau / 2 * squared_distances(support, weights)).log_softmax(1)
                p_query = (-tau / 2 * squared_distances(query, weights)).softmax(1)
                ce = -(targets * log_p_support).sum(1).mean()
                conditional = -(p_query * (p_query + 1e-12).log()).sum(1).mean()
                marginal_p = p_query.mean(0)
                marginal = -(marginal_p * (marginal_p + 1e-12).log()).sum()
                loss = (self.ce_weight * ce
                        - (self.marginal_weight * marginal - self.conditional_weight * conditional))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        weights = weights.detach()
        return lambda q: -tau / 2 * squared_distances(F.normalize(q, dim=1), weights)
