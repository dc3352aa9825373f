"""R2-D2 (closed-form ridge head) and MetaOptNet-SVM (differentiable multi-class SVM
head): their solvers against generic ones (numpy least squares, scipy's SLSQP),
finite-difference gradient checks in float64, and the methods through the contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from fewshot.data.episodes import Episode
from fewshot.errors import ConfigError
from fewshot.methods import METHODS, build_method
from fewshot.methods.metaoptnet import MetaOptNet, project_rows_to_simplex, svm_dual, svm_head
from fewshot.methods.r2d2 import R2D2, ridge_weights


def problem(n=6, way=3, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.arange(way).repeat(n // way)
    return x, y, torch.nn.functional.one_hot(y, way).double()


def test_both_methods_are_registered():
    assert METHODS["r2d2"] is R2D2 and METHODS["metaoptnet"] is MetaOptNet


@pytest.mark.parametrize("n, d", [(6, 4), (5, 20)])  # more and fewer examples than features
def test_ridge_weights_match_least_squares_on_the_augmented_system(n, d):
    x, _, targets = problem(n=n, way=1 if n == 5 else 3, d=d)
    lam = 0.7
    # argmin ||XW - Y||² + λ||W||² is the least-squares solution of [X; √λ I] W = [Y; 0].
    a = np.vstack([x.numpy(), np.sqrt(lam) * np.eye(d)])
    b = np.vstack([targets.numpy(), np.zeros((d, targets.shape[1]))])
    expected = np.linalg.lstsq(a, b, rcond=None)[0]
    np.testing.assert_allclose(ridge_weights(x, targets, lam).numpy(), expected, atol=1e-10)


def test_ridge_logits_pass_a_finite_difference_gradient_check():
    support, _, targets = problem()
    query = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lam = torch.tensor(0.5, dtype=torch.float64)

    def logits(s, q, l):
        return q @ ridge_weights(s, targets, l)

    assert torch.autograd.gradcheck(logits, (support.requires_grad_(), query.requires_grad_(), lam.requires_grad_()))


def dual_by_scipy(gram: np.ndarray, targets: np.ndarray, C: float) -> tuple[np.ndarray, float]:
    """The same dual solved by scipy's SLSQP: its solution and objective."""
    n, way = targets.shape

    def objective(v):
        a = v.reshape(n, way)
        return 0.5 * np.einsum("nk,nm,mk->", a, gram, a) - (a * targets).sum()

    def gradient(v):
        return (gram @ v.reshape(n, way) - targets).ravel()

    constraints = [{"type": "eq", "fun": lambda v: v.reshape(n, way).sum(1),
                    "jac": lambda v: np.kron(np.eye(n), np.ones((1, way)))}]
    bounds = [(None, C * t) for t in targets.ravel()]
    result = minimize(objective, np.zeros(n * way), jac=gradient, method="SLSQP", bounds=bounds,
                      constraints=constraints, options={"ftol": 1e-12, "maxiter": 1000})
    return result.x.reshape(n, way), float(result.fun)


@pytest.mark.parametrize("seed, C", [(0, 0.1), (1, 0.1), (2, 1.0), (3, 10.0)])
def test_svm_dual_matches_a_generic_qp_solver(seed, C):
    support, _, targets = problem(n=9, way=3, d=5, seed=seed)
    gram = support @ support.T
    alpha = svm_dual(gram, targets, C, iterations=3000)
    expected, best = dual_by_scipy(gram.numpy(), targets.numpy(), C)
    ours = 0.5 * torch.einsum("nk,nm,mk->", alpha, gram, alpha) - (alpha * targets).sum()
    assert abs(float(ours) - best) <= 1e-8 * max(1.0, abs(best))
    # K has rank 5 < 9, so α need not be unique; the SVM's weights w_k = Σ_n α_n^k x_n are.
    np.testing.assert_allclose((support.T @ alpha).numpy(), support.numpy().T @ expected, atol=1e-5)
    # Feasible: α ≤ C·[k = y], rows sum to 0.
    assert (alpha <= C * targets + 1e-12).all()
    torch.testing.assert_close(alpha.sum(1), torch.zeros(9, dtype=torch.float64), atol=1e-12, rtol=0)


def test_simplex_projection_is_the_nearest_point_of_the_simplex():
    v = torch.tensor([[0.5, 0.2, -0.1], [3.0, -1.0, 0.0], [0.1, 0.1, 0.1]], dtype=torch.float64)
    p = project_rows_to_simplex(v, 1.0)
    torch.testing.assert_close(p.sum(1), torch.ones(3, dtype=torch.float64))
    assert (p >= 0).all()
    torch.testing.assert_close(p[1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(p[2], torch.full((3,), 1 / 3, dtype=torch.float64))
    # Nearest: no random point of the simplex is closer.
    for point in torch.distributions.Dirichlet(torch.ones(3, dtype=torch.float64)).sample((200,)):
        assert ((v - point) ** 2).sum(1).ge(((v - p) ** 2).sum(1) - 1e-12).all()


def test_svm_logits_pass_a_finite_difference_gradient_check():
    support, y, _ = problem(n=6, way=3, d=4, seed=4)
    query = torch.randn(3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def logits(s, q):
        return svm_head(s, y, 3, 0.1, iterations=300)(q)

    assert torch.autograd.gradcheck(logits, (support.requires_grad_(), query.requires_grad_()), atol=1e-5)


class Flat(nn.Module):
    """A backbone with one linear layer, so that gradients reach parameters."""

    def __init__(self, d=8):
        super().__init__()
        self.linear = nn.Linear(d, d)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(d))
            self.linear.bias.zero_()

    def forward(self, x):
        return self.linear(x)


def clusters(way=4, shot=3, query=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.eye(d)[:way]
    sx = centres.repeat_interleave(shot, 0) + 0.3 * torch.randn(way * shot, d, generator=g)
    qx = centres.repeat_interleave(query, 0) + 0.3 * torch.randn(way * query, d, generator=g)
    return Episode(sx, torch.arange(way).repeat_interleave(shot), qx, torch.arange(way).repeat_interleave(query),
                   way, shot)


@pytest.mark.parametrize("name", ["r2d2", "metaoptnet"])
def test_the_methods_classify_separable_clusters_and_train_their_backbone(name):
    method = build_method(name, Flat())
    episode = clusters()
    logits = method.adapt(episode.support_x, episode.support_y, episode.way)(episode.query_x)
    assert logits.shape == (20, 4)
    assert (logits.argmax(1) == episode.query_y).all()
    loss, metrics = method.loss([episode, clusters(seed=1)])
    loss.backward()
    assert torch.isfinite(loss) and metrics["accuracy"] == 100.0
    grads = [p.grad for p in method.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert method.backbone.linear.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name, options, message", [
    ("r2d2", {"lam": 0.0}, "r2d2 'lam' must be a finite number > 0"),
    ("r2d2", {"learn_lambda": "yes"}, "r2d2 'learn_lambda' must be true or false"),
    ("metaoptnet", {"C": -1.0}, "metaoptnet 'C' must be a finite number > 0"),
    ("metaoptnet", {"iterations": 0}, "metaoptnet 'iterations' must be an integer in [1, 100000]"),
    ("metaoptnet", {"solver": "qpth"}, "method 'metaoptnet' has no option 'solver'"),
])
def test_bad_options_are_one_line_config_errors(name, options, message):
    with pytest.raises(ConfigError) as info:
        build_method(name, Flat(), **options)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_r2d2_learns_lambda_scale_and_bias_unless_lambda_is_fixed():
    learned = {n for n, _ in build_method("r2d2", Flat()).named_parameters() if not n.startswith("backbone")}
    assert learned == {"log_lam", "alpha", "beta"}
    fixed = {n for n, _ in build_method("r2d2", Flat(), learn_lambda=False).named_parameters()
             if not n.startswith("backbone")}
    assert fixed == {"alpha", "beta"}


@pytest.mark.parametrize("name", ["r2d2", "metaoptnet"])
def test_the_methods_run_on_the_meta_device_but_for_the_svm_step_size(name):
    """R2-D2 creates nothing off its inputs' device; MetaOptNet needs the eigenvalue of
    a real Gram matrix for its step, so it is checked in float64 for dtype instead."""
    episode = clusters()
    if name == "r2d2":
        method = build_method(name, Flat()).to("meta")
        logits = method.adapt(episode.support_x.to("meta"), episode.support_y.to("meta"), 4)(episode.query_x.to("meta"))
        assert logits.device.type == "meta" and logits.shape == (20, 4)
    else:
        method = build_method(name, Flat()).double()
        logits = method.adapt(episode.support_x.double(), episode.support_y, 4)(episode.query_x.double())
        assert logits.dtype == torch.float64 and (logits.argmax(1) == episode.query_y).all()
