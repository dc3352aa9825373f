"""LaplacianShot: Laplacian-regularised few-shot inference (Ziko, Dolz, Granger and
Ben Ayed, ICML 2020, arXiv:2006.15486)."""

from __future__ import annotations

import torch

from ..errors import DataError
from ..params import Boolean, Integer, OneOf, Real
from .base import NORMS, Head, Predictor, normalizer, prototypes, register_head, squared_distances
from .bdcspn import rectify_prototypes


def knn_affinity(features: torch.Tensor, k: int) -> torch.Tensor:
    """``(m, m)`` binary k-nearest-neighbour affinity: ``W[i, j] = 1`` when ``j`` is one of
    the ``k`` nearest other points of ``i`` (Euclidean; not symmetrised, as in the paper's code)."""
    m = len(features)
    distances = squared_distances(features, features)
    distances = distances + torch.diag(torch.full((m,), float("inf"), dtype=distances.dtype,
                                                  device=distances.device))  # not its own neighbour
    nearest = distances.topk(min(k, m - 1), dim=1, largest=False).indices
    return torch.zeros_like(distances).scatter_(1, nearest, 1.0)


def bound_updates(unary: torch.Tensor, affinity: torch.Tensor, lam: float, steps: int) -> torch.Tensor:
    """LaplacianShot's bound optimisation (the paper's Algorithm 1): from
    ``Y = softmax(-unary)``, repeat ``Y <- softmax(-unary + λ W Y)`` at most ``steps``
    times, stopping (from the third update on) once the relaxed energy
    ``Σ Y∘(log Y + unary − λ W Y)`` changes by at most 1e-6 of itself. Returns the logits
    ``-unary + λ W Y`` of the last update."""
    logits = -unary
    assignment = logits.softmax(1)
    previous = float("inf")
    for i in range(steps):
        logits = -unary + lam * (affinity @ assignment)
        assignment = logits.softmax(1)
        energy = float((assignment * (assignment.clamp_min(1e-20).log() + unary
                                      - lam * (affinity @ assignment))).sum())
        if i > 1 and abs(energy - previous) <= 1e-6 * abs(previous):  # from the third update, as the authors' code
            break
        previous = energy
    return logits


@register_head
class LaplacianShot(Head):
    """LaplacianShot's bound optimisation; transductive.

    Features are transformed as SimpleShot's (``norm``, CL2N by default: centred on the
    base-class mean given with :meth:`fit_base`, else on the support mean, then
    L2-normalised). With ``rectify`` (the paper's reported setting) the prototypes
    ``m_k`` are BD-CSPN's rectified ones (:func:`~fewshot.heads.bdcspn.rectify_prototypes`,
    ε = 10) and the queries are shifted by its cross-class shift ``ξ``, else the
    prototypes are the support means. The unary term is ``a_qk = ||x_q - m_k||²``; the
    query assignments ``Y`` minimise
    ``Σ_q a_q·y_q − λ Σ_{q,p} W_qp y_q·y_p + Σ_q y_q·log y_q`` over a k-NN affinity ``W``
    (``knn`` = 3, λ = ``lam`` = 0.7, the defaults of the authors' code), by the paper's
    bound updates ``Y ← softmax(−a + λ W Y)`` for at most ``steps`` = 20 iterations,
    stopping when the energy changes by less than 1e-6 of itself. The logits are
    ``−a + λ W Y`` of the last update (their softmax is ``Y``).
    """

    name = "laplacianshot"
    transductive = True
    uses_base_features = True
    _parameter_constraints = {"knn": Integer(low=1, high=1000), "lam": Real(low=0), "steps": Integer(low=1, high=1000),
                              "rectify": Boolean(), "norm": OneOf(*NORMS)}

    def __init__(self, knn: int = 3, lam: float = 0.7, steps: int = 20, rectify: bool = True, norm: str = "CL2N"):
        self.knn = knn
        self.lam = lam
        self.steps = steps
        self.rectify = rectify
        self.norm = norm
        self.base_mean: torch.Tensor | None = None

    def fit_base(self, base_features: torch.Tensor) -> "LaplacianShot":
        self.base_mean = base_features.mean(0, keepdim=True).detach()
        return self

    def _fit(self, support, labels, way, query) -> Predictor:
        centre = self.base_mean if self.base_mean is not None else prototypes(support, labels, way).mean(0, keepdim=True)
        transform = normalizer(self.norm, centre)
        support, query_t = transform(support), transform(query)
        if self.rectify:
            centroids, shift = rectify_prototypes(support, labels, way, query_t, 10.0)
            query_t = query_t + shift  # the queries stay shifted, as in the authors' code
        else:
            centroids = prototypes(support, labels, way)
        unary = squared_distances(query_t, centroids)
        affinity = knn_affinity(query_t, int(self.knn)) if len(query_t) > 1 else torch.zeros_like(unary[:, :1].T)
        final = bound_updates(unary, affinity, float(self.lam), int(self.steps))

        def predict(q: torch.Tensor) -> torch.Tensor:
            if q is not query and not torch.equal(q, query):
                raise DataError("head 'laplacianshot' is transductive: its predictor scores the queries it was fitted on")
            return final
        return predict
