"""MetaOptNet-SVM: a differentiable multi-class SVM head, meta-learned end to end (Lee,
Maji, Ravichandran and Soatto, CVPR 2019, "Meta-Learning with Differentiable Convex
Optimization", arXiv:1904.03758).

Per episode, a Crammer-Singer multi-class linear SVM is fitted on the support features
``x_n`` (labels ``y_n``) through its dual (the paper's Eq. 5-6): with ``K = X X^T``,

    min_α  ½ Σ_k α_k^T K α_k − Σ_n α_n^{y_n}
    s.t.   α_n^k ≤ C·[k = y_n],   Σ_k α_n^k = 0      (every n)

(``α`` is (n, way), ``α_k`` its column k), and the query logits are ``w_k·x = Σ_n α_n^k x_n·x``,
times a learned scale (the paper's temperature). With ``β_n = C·e_{y_n} − α_n`` the
constraints say ``β_n`` lies on the simplex scaled by C, so the QP is solved by
accelerated projected gradient (FISTA, Beck and Teboulle 2009) with an exact projection
onto each row's simplex (Duchi et al. 2008): plain batched tensor operations, the same
on CPU and GPU, differentiable by unrolling the ``iterations`` (the paper used the
OptNet interior-point solver, differentiating its KKT conditions; at the optimum both
give the solution's gradient, unrolling approximately).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.episodes import Episode
from ..params import Integer, Real
from .base import Method, Predictor, register

OPTIONS = {"C": Real(low=0, open_low=True), "iterations": Integer(low=1, high=100_000),
           "scale": Real(low=0, open_low=True)}


def project_rows_to_simplex(v: torch.Tensor, total: float) -> torch.Tensor:
    """Each row of ``v`` projected (Euclidean) onto ``{b ≥ 0, Σ b = total}`` (Duchi et al. 2008)."""
    u = v.sort(dim=-1, descending=True).values
    cumulative = u.cumsum(-1) - total
    index = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    rho = ((u - cumulative / index) > 0).sum(-1, keepdim=True)  # how many stay positive (≥ 1)
    theta = cumulative.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp_min(0)


def svm_dual(gram: torch.Tensor, targets: torch.Tensor, C: float, iterations: int) -> torch.Tensor:
    """The dual variables ``α`` (n, way) of the Crammer-Singer SVM (module docstring) for
    the support Gram matrix ``gram`` (n, n) and one-hot ``targets`` (n, way), by
    ``iterations`` of FISTA on ``β = C·targets − α``."""
    # Step 1/L with L the largest eigenvalue of K (the objective's Hessian is K ⊗ I); a
    # constant of the solver, not a function of the features to differentiate.
    # eigvalsh has no half-precision kernel: the step is found in (at least) float32.
    exact = gram.detach() if gram.dtype == torch.float64 else gram.detach().float()
    step = (1.0 / torch.linalg.eigvalsh(exact)[-1].clamp_min(1e-12)).to(gram.dtype)
    offset = C * targets
    beta = offset.clone()  # α = 0: feasible
    momentum, t = beta, 1.0
    for _ in range(iterations):
        alpha = offset - momentum
        gradient_alpha = gram @ alpha - targets
        new_beta = project_rows_to_simplex(momentum + step * gradient_alpha, C)  # ∂/∂β = -∂/∂α
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        momentum = new_beta + ((t - 1) / t_next) * (new_beta - beta)
        beta, t = new_beta, t_next
    return offset - beta


def svm_head(support: torch.Tensor, support_y: torch.Tensor, way: int, C: float, iterations: int) -> Predictor:
    """The query-logit function ``x -> (x X^T) α`` of the SVM fitted on ``support``."""
    targets = (support_y[:, None] == torch.arange(way, device=support_y.device)[None]).to(support.dtype)
    alpha = svm_dual(support @ support.T, targets, C, iterations)
    return lambda query: (query @ support.T) @ alpha


@register
class MetaOptNet(Method):
    """MetaOptNet-SVM (see the module docstring). ``C`` = 0.1 (the paper's), ``iterations``
    of the QP solver (200), ``scale``: the logits' learned scale's initial value (1)."""

    name = "metaoptnet"
    _parameter_constraints = OPTIONS

    def __init__(self, backbone: nn.Module, C: float = 0.1, iterations: int = 200, scale: float = 1.0):
        super().__init__(backbone)
        self.C, self.iterations, self.scale_init = float(C), int(iterations), float(scale)
        self.scale = nn.Parameter(torch.tensor(self.scale_init))

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        n = len(episode.support_x)
        features = self.features(torch.cat([episode.support_x, episode.query_x]))
        head = svm_head(features[:n], episode.support_y, episode.way, self.C, self.iterations)
        return self.scale * head(features[n:])

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        head = svm_head(self.features(support_x), support_y, way, self.C, self.iterations)
        return lambda query_x: self.scale * head(self.features(query_x))
