"""Logistic-regression linear probe on frozen features (the linear evaluation of
transfer learning; e.g. Tian et al. 2020, "Rethinking few-shot image classification",
arXiv:2003.11539)."""

from __future__ import annotations

from ..models.heads import logistic_probe
from ..params import Boolean, Integer, Real
from .base import Head, Predictor, normalizer, register_head


@register_head
class LogisticProbe(Head):
    """Multinomial L2-regularised logistic regression (scikit-learn's lbfgs, inverse
    regularisation ``C``) fitted on the support features, L2-normalised first when
    ``normalize`` (Tian et al.'s choice). Fitted on the host, in float64; the logits come
    back in the features' dtype and device."""

    name = "logistic"
    transductive = False
    _parameter_constraints = {"C": Real(low=0, open_low=True), "normalize": Boolean(),
                              "max_iter": Integer(low=1, high=100_000)}

    def __init__(self, C: float = 1.0, normalize: bool = True, max_iter: int = 1000):
        self.C = C
        self.normalize = normalize
        self.max_iter = max_iter

    def _fit(self, support, labels, way, query) -> Predictor:
        transform = normalizer("L2N" if self.normalize else "UN", None)
        linear = logistic_probe(transform(support), labels, way, C=float(self.C), max_iter=int(self.max_iter))
        linear = linear.to(support.dtype).requires_grad_(False)
        return lambda q: linear(transform(q))
