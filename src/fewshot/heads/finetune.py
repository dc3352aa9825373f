"""Transductive fine-tuning (Dhillon, Chaudhari, Ravichandran and Soatto, ICLR 2020,
"A Baseline for Few-Shot Image Classification", arXiv:1909.02729), feature-level version."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import Integer, Real
from .base import Head, Predictor, one_hot, prototypes, register_head


@register_head
class TransductiveFinetune(Head):
    """Dhillon et al.'s transductive fine-tuning, on fixed features: only the classifier
    is fine-tuned (the paper also fine-tunes the backbone; a head sees features only).

    The classifier is linear on L2-normalised features, ``logits = τ·(W z/||z||)``
    (τ = ``temperature``, 1: none), with the paper's support-based initialisation: row
    ``k`` of ``W`` is the L2-normalised mean of the normalised support features of class
    ``k``. It minimises, with Adam (``lr`` = 5e-5, ``steps`` = 25: the paper's 25 epochs,
    one full-batch step each), the support cross-entropy plus the mean entropy of the
    query predictions, weighted equally as in the paper. With those settings and the
    backbone frozen the classifier barely moves from the prototypes; raise ``lr`` or
    ``steps`` to let the queries matter more.
    """

    name = "transductive_finetune"
    transductive = True
    _parameter_constraints = {"steps": Integer(low=0, high=100_000), "lr": Real(low=0, open_low=True),
                              "temperature": Real(low=0, open_low=True), "entropy_weight": Real(low=0)}

    def __init__(self, steps: int = 25, lr: float = 5e-5, temperature: float = 1.0, entropy_weight: float = 1.0):
        self.steps = steps
        self.lr = lr
        self.temperature = temperature
        self.entropy_weight = entropy_weight

    def _fit(self, support, labels, way, query) -> Predictor:
        support, query = F.normalize(support.detach(), dim=1), F.normalize(query.detach(), dim=1)
        tau = float(self.temperature)
        weights = F.normalize(prototypes(support, labels, way), dim=1).clone().requires_grad_(True)
        targets = one_hot(labels, way, support.dtype)
        optimizer = torch.optim.Adam([weights], lr=float(self.lr))
        with torch.enable_grad():
            for _ in range(int(self.steps)):
                ce = -(targets * (tau * support @ weights.T).log_softmax(1)).sum(1).mean()
                log_p = (tau * query @ weights.T).log_softmax(1)
                entropy = -(log_p.exp() * log_p).sum(1).mean()
                loss = ce + self.entropy_weight * entropy
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        weights = weights.detach()
        return lambda q: tau * F.normalize(q, dim=1) @ weights.T
