"""Trust-region policy optimisation's step (Schulman et al., 2015, arXiv:1502.05477), for any
differentiable objective and KL of a parameter dictionary.

Finn et al. (2017, arXiv:1703.03400, section 5.3) meta-train MAML's policies with TRPO:
the objective is the outer surrogate of the *adapted* policies and the KL is between
the adapted policies before and after the meta-update, both functions of the
meta-parameters θ through the inner policy-gradient step. This module does not know
about MAML: it takes two closures of a flat parameter vector, ``objective(x)`` (to
minimise) and ``kl(x)`` (the mean KL from the policy at the current point ``x0``), and

1. solves ``F s = -g`` by conjugate gradient (:func:`conjugate_gradient`, 10 iterations
   as rllab), with ``g`` the objective's gradient and ``F`` the Hessian of the KL at
   ``x0`` (the Fisher information, the KL's curvature; its gradient vanishes there), used
   only through Fisher-vector products (:func:`fisher_vector_product`, two backward
   passes, damped by ``damping * v`` as rllab's ``reg_coeff``);
2. scales ``s`` to the trust region's edge, ``β = sqrt(2 δ / sᵀ F s)``;
3. backtracks (``ratio^k``, ``k < max_backtracks``) until the objective decreases and the
   KL is at most ``δ`` (``max_kl``), else takes no step (rllab's
   ``ConjugateGradientOptimizer`` with ``backtrack_ratio=0.8, max_backtracks=15``, the
   optimiser of Finn et al.'s code; ProMP, Rothfuss et al. 2018, arXiv:1810.06784, does
   the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Closure = Callable[[torch.Tensor], torch.Tensor]


def conjugate_gradient(product: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       tolerance: float = 1e-10) -> torch.Tensor:
    """Approximately solve ``A x = b`` for a symmetric positive-definite ``A`` given only
    ``product(v) = A v`` (Hestenes & Stiefel, 1952), from ``x = 0``; stops early once the
    squared residual is below ``tolerance``."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr <= tolerance:
            break
        ap = product(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def fisher_vector_product(kl: Closure, x0: torch.Tensor, v: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    """``(∇² KL(x0)) v + damping v``: the Hessian of ``kl`` at ``x0`` times ``v`` by double
    backpropagation (Pearlmutter, 1994), never forming the matrix."""
    x = x0.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(kl(x), x, create_graph=True)
        (hv,) = torch.autograd.grad(grad @ v.detach(), x)
    return hv.detach() + damping * v


@dataclass
class TRPOStep:
    """The step taken and what the line search saw: ``step`` (added to ``x0``), the
    objective before and after, the KL after, and the backtracks taken (``accepted``
    False: no point passed, the step is zero)."""

    step: torch.Tensor
    objective_before: float
    objective_after: float
    kl: float
    backtracks: int
    accepted: bool


def trpo_step(objective: Closure, kl: Closure, x0: torch.Tensor, max_kl: float = 0.01, cg_iters: int = 10,
              damping: float = 1e-5, backtrack_ratio: float = 0.8, max_backtracks: int = 15) -> TRPOStep:
    """One TRPO update of the flat parameters ``x0`` (see the module docstring)."""
    x0 = x0.detach()
    x = x0.clone().requires_grad_(True)
    with torch.enable_grad():
        before = objective(x)
        (grad,) = torch.autograd.grad(before, x)
    before = float(before.detach())
    product = lambda v: fisher_vector_product(kl, x0, v, damping)  # noqa: E731
    direction = conjugate_gradient(product, -grad, cg_iters)
    curvature = float(direction @ product(direction))
    zero = torch.zeros_like(x0)
    if not (curvature > 0 and torch.isfinite(direction).all()):
        return TRPOStep(zero, before, before, 0.0, 0, False)
    full = direction * (2 * max_kl / curvature) ** 0.5
    for k in range(max_backtracks):
        step = full * backtrack_ratio ** k
        # One point for both closures (they may share work on it); it requires grad, since the
        # objective may differentiate inside (MAML's inner step).
        candidate = (x0 + step).requires_grad_(True)
        with torch.no_grad():  # values only (a closure enables gradients where it needs them)
            after, divergence = float(objective(candidate)), float(kl(candidate))
        if after < before and divergence <= max_kl:
            return TRPOStep(step, before, after, divergence, k, True)
    return TRPOStep(zero, before, before, 0.0, max_backtracks, False)


__all__ = ["TRPOStep", "conjugate_gradient", "fisher_vector_product", "trpo_step"]
