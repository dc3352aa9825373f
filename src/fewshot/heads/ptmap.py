"""PT-MAP: power transform and MAP estimation of class centres by optimal transport
(Hu, Gripon and Pateux, ICANN 2021, "Leveraging the Feature Distribution in
Transfer-based Few-Shot Learning", arXiv:2006.03806)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DataError
from ..params import Integer, Real
from .base import Head, Predictor, one_hot, prototypes, register_head, squared_distances


def power_transform(features: torch.Tensor, beta: float) -> torch.Tensor:
    """``(x + 1e-6)^β`` then L2 normalisation (the paper's PT, Eq. 1, for non-negative features)."""
    return F.normalize((features + 1e-6).pow(beta), dim=1)


def sinkhorn(cost: torch.Tensor, lam: float, column_mass: float, tolerance: float = 1e-6,
             max_iterations: int = 1000) -> torch.Tensor:
    """The entropic optimal-transport plan ``(m, way)`` of ``exp(-λ·cost)`` scaled so each
    row sums to 1 (each query is one sample) and each column to ``column_mass`` (the
    queries per class, balanced classes assumed), by Sinkhorn's alternating scaling;
    stops when the row sums are within ``tolerance`` of 1."""
    plan = (-lam * (cost - cost.min(1, keepdim=True).values)).exp()  # row shifts cancel in the scaling
    plan = plan / plan.sum()
    for _ in range(max_iterations):
        rows = plan.sum(1, keepdim=True)
        plan = plan / rows
        plan = plan * (column_mass / plan.sum(0, keepdim=True))
        if (rows - 1).abs().max() <= tolerance:  # the rows before this scaling were already right
            break
    return plan


@register_head
class PTMAP(Head):
    """PT-MAP; transductive, for balanced query sets.

    Features: power transform with ``beta`` = 0.5 (needs non-negative features, e.g.
    ReLU outputs; ``beta=1`` skips it), unit norm, then the support and query features
    are each centred on their own mean (as the authors' code does) and normalised again.
    Class centres start at the support means and are updated ``steps`` = 20 times:
    the query soft assignments are the Sinkhorn plan of ``exp(-λ||x - c_k||²)`` with
    λ = ``lam`` = 10 (rows sum to 1, columns to ``m/way``); each centre moves by
    α = ``alpha`` = 0.2 towards the mean of the support (one-hot) and queries (soft)
    weighted by those assignments. The logits are the log of the final assignments.
    """

    name = "ptmap"
    transductive = True
    _parameter_constraints = {"beta": Real(low=0, high=1, open_low=True), "lam": Real(low=0, open_low=True),
                              "alpha": Real(low=0, high=1, open_low=True), "steps": Integer(low=0, high=10_000)}

    def __init__(self, beta: float = 0.5, lam: float = 10.0, alpha: float = 0.2, steps: int = 20):
        self.beta = beta
        self.lam = lam
        self.alpha = alpha
        self.steps = steps

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        x = power_transform(x, float(self.beta)) if self.beta != 1 else F.normalize(x, dim=1)
        return F.normalize(x - x.mean(0, keepdim=True), dim=1)

    def _fit(self, support, labels, way, query) -> Predictor:
        if self.beta != 1 and support.device.type != "meta" and bool((torch.cat([support, query]) < 0).any()):
            raise DataError("head 'ptmap': its power transform needs non-negative features (ReLU outputs); "
                            "set beta=1 to skip it")
        support, transformed_query = self._transform(support), self._transform(query)
        lam, alpha, mass = float(self.lam), float(self.alpha), len(query) / way
        targets = one_hot(labels, way, support.dtype)
        data = torch.cat([support, transformed_query])
        centres = prototypes(support, labels, way)
        for _ in range(int(self.steps)):
            plan = sinkhorn(squared_distances(transformed_query, centres), lam, mass)
            assignment = torch.cat([targets, plan])
            estimate = (assignment.T @ data) / assignment.sum(0)[:, None]
            centres = centres + alpha * (estimate - centres)
        plan = sinkhorn(squared_distances(transformed_query, centres), lam, mass)
        logits = (plan / plan.sum(1, keepdim=True)).clamp_min(torch.finfo(plan.dtype).tiny).log()

        def predict(q: torch.Tensor) -> torch.Tensor:
            if q is not query and not torch.equal(q, query):
                # The assignments are of the queries it was fitted on, jointly.
                raise DataError("head 'ptmap' is transductive: its predictor scores the queries it was fitted on")
            return logits
        return predict
