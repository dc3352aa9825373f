"""R2-D2: a closed-form ridge-regression head, meta-learned end to end (Bertinetto,
Henriques, Torr and Vedaldi, ICLR 2019, "Meta-learning with differentiable closed-form
solvers", arXiv:1805.08136).

Per episode, the support features ``X`` (n, d) regress the one-hot labels ``Y`` (n, way)
by ridge regression, solved in closed form with the Woodbury identity, which inverts an
``n x n`` matrix (n, the support size, is far below the feature size d):

    W = X^T (X X^T + λ I_n)^{-1} Y        (= (X^T X + λ I_d)^{-1} X^T Y)

and the query logits are ``α · X_q W + β`` with a learned scale α and bias β (the
paper's calibration of the regression outputs for the cross-entropy). λ is meta-learned
too (kept positive as ``exp`` of a learned log). Gradients reach the backbone through
the solve, so the backbone is meta-trained for this head.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data.episodes import Episode
from ..params import Boolean, Real
from .base import Method, Predictor, register

OPTIONS = {"lam": Real(low=0, open_low=True), "learn_lambda": Boolean(), "scale": Real(low=0, open_low=True)}


def ridge_weights(support: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Ridge-regression weights ``(d, way)`` of ``targets`` (n, way) on ``support`` (n, d), Woodbury form."""
    n = len(support)
    gram = support @ support.T + lam * torch.eye(n, dtype=support.dtype, device=support.device)
    return support.T @ torch.linalg.solve(gram, targets)


@register
class R2D2(Method):
    """R2-D2 (see the module docstring). ``lam``: λ's initial value (1.0), learned unless
    ``learn_lambda=false``; ``scale``: α's initial value (1.0; β starts at 0)."""

    name = "r2d2"
    _parameter_constraints = OPTIONS

    def __init__(self, backbone: nn.Module, lam: float = 1.0, learn_lambda: bool = True, scale: float = 1.0):
        super().__init__(backbone)
        self.lam_init, self.learn_lambda, self.scale_init = float(lam), bool(learn_lambda), float(scale)
        log_lam = torch.tensor(math.log(self.lam_init))
        self.log_lam = nn.Parameter(log_lam) if self.learn_lambda else None
        if not self.learn_lambda:
            self.register_buffer("fixed_log_lam", log_lam)
        self.alpha = nn.Parameter(torch.tensor(self.scale_init))
        self.beta = nn.Parameter(torch.tensor(0.0))

    def lam(self) -> torch.Tensor:
        return (self.log_lam if self.log_lam is not None else self.fixed_log_lam).exp()

    def _head(self, support: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        targets = (support_y[:, None] == torch.arange(way, device=support_y.device)[None]).to(support.dtype)
        weights = ridge_weights(support, targets, self.lam().to(support.dtype))
        return lambda query: self.alpha * (query @ weights) + self.beta

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        n = len(episode.support_x)
        features = self.features(torch.cat([episode.support_x, episode.query_x]))
        return self._head(features[:n], episode.support_y, episode.way)(features[n:])

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        head = self._head(self.features(support_x), support_y, way)
        return lambda query_x: head(self.features(query_x))
