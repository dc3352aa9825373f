"""Transferability scores: how well a frozen model's features suit a task, from its support set.

Each score maps a task's support features ``(N, D)`` and labels ``(N,)`` (and, for NCE and
LEEP, the source model's class probabilities ``(N, Z)``) to one number; higher always means
better expected transfer. :func:`compute_scores` runs any of them and reports, for each
score that does not apply to the task (NCE without source predictions, leave-one-out at
1 shot), ``None`` and the reason.

Few-shot support sets have far fewer examples than dimensions (5 examples of 1,600
features is common), so every score works in the span of the examples: it
eigen-decomposes the smaller of the two Gram matrices (``X Xᵀ`` when N < D), which costs
O(N²D) instead of O(D³) and gives the same numbers. Everything runs in float64.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import scipy.linalg

from ..errors import DataError, FewShotError
from ..registry import Registry


class ScoreNotApplicable(FewShotError):
    """The score is undefined for this task (e.g. it needs source predictions that were not given)."""


# -- input checks -------------------------------------------------------------------------------

def _to_numpy(value, name: str, dtype=np.float64) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor: scores are plain numpy on the CPU
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be numeric: {exc}") from None


def _features(features) -> np.ndarray:
    x = _to_numpy(features, "features")
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise DataError(f"features must be an (examples, dimensions) array with at least 2 examples, "
                        f"got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError("features contain NaN or infinite values")
    return x


def _labels(labels, n: int) -> tuple[np.ndarray, int]:
    """Labels as class codes 0..C-1 (in sorted order of the given labels) and C."""
    y = _to_numpy(labels, "labels", dtype=None)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"labels must be one per example: got shape {y.shape} for {n} examples")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError("labels contain NaN or infinite values")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"a task needs at least 2 classes, the labels have {len(classes)}")
    return codes, len(classes)


def _source_probs(source_probs, score: str, n: int | None = None) -> np.ndarray:
    if source_probs is None:
        raise ScoreNotApplicable(f"{score} needs the source model's class probabilities on the support set")
    p = _to_numpy(source_probs, "source_probs")
    if p.ndim != 2 or len(p) < 2 or (n is not None and len(p) != n):
        rows = f"{n} rows (one per example)" if n is not None else "one row per example"
        raise DataError(f"source_probs must be (examples, source classes) with {rows}, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise DataError("source_probs contain NaN or infinite values")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise DataError("source_probs rows must be probabilities summing to 1 (apply a softmax to logits)")
    return p


def check_task(features, labels, source_probs=None) -> tuple[np.ndarray, np.ndarray, int]:
    """Validated float64 features, labels as codes 0..C-1, and C (raises :class:`DataError`)."""
    x = _features(features)
    y, n_classes = _labels(labels, len(x))
    if source_probs is not None:
        _source_probs(source_probs, "a score", len(x))
    return x, y, n_classes


# -- shared linear algebra ----------------------------------------------------------------------

def _span(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors ``U`` (N, k) and squared singular values (k,) of ``x``, null space dropped.

    Eigen-decomposes the smaller Gram matrix: ``x xᵀ`` (N × N) when N ≤ D, else ``xᵀ x``.
    Squared singular values below 1e-10 of the largest are numerically zero and dropped.
    """
    n, d = x.shape
    gram = x @ x.T if n <= d else x.T @ x
    sig, vec = np.linalg.eigh(gram)
    sig, vec = sig[::-1], vec[:, ::-1]
    keep = sig > max(sig[0], 0.0) * 1e-10
    sig, vec = sig[keep], vec[:, keep]
    u = vec if n <= d else (x @ vec) / np.sqrt(sig)
    return u, sig


def _gram_eigvals(x: np.ndarray) -> np.ndarray:
    """Eigenvalues of ``xᵀ x``, via the smaller Gram matrix (the non-zero ones are shared)."""
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    return np.clip(np.linalg.eigvalsh(gram), 0.0, None)


def _class_means(x: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    means = np.zeros((n_classes, x.shape[1]))
    np.add.at(means, y, x)
    return means / counts[:, None], counts


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# -- LogME ----------------------------------------------------------------------------------------

def _profile_log_evidence(log_ratio: np.ndarray, sig: np.ndarray, z2: np.ndarray, outside: np.ndarray,
                          n: int) -> np.ndarray:
    """log p(y | X, α, β) at the best β for the ratio λ = α/β = exp(log_ratio), per target.

    y ~ N(0, XXᵀ/α + I/β) = N(0, (XXᵀ/λ + I)/β): in the basis of X's left singular vectors
    the covariance is diagonal, (σᵢ/λ + 1)/β on the span and 1/β outside it, so the best β is
    N / Q with Q = Σᵢ zᵢ²·λ/(σᵢ + λ) + |y outside the span|², and the log evidence is
    -½(N log 2π + N log(Q/N) + Σᵢ log(1 + σᵢ/λ) + N). ``sig`` is (k,), ``z2`` (k, targets).
    """
    lam = np.exp(log_ratio)
    s = sig[:, None]
    q = (z2 * lam / (s + lam)).sum(0) + outside
    return -0.5 * (n * math.log(2 * math.pi) + n * np.log(q / n) + np.log1p(s / lam).sum(0) + n)


def _max_log_evidence(sig: np.ndarray, z2: np.ndarray, outside: np.ndarray, n: int) -> np.ndarray:
    """The maximum over (α, β) of the log evidence of each target column of ``z2`` (k, targets).

    You et al. (2021, Algorithm 1) find it with MacKay's fixed-point updates of α and β.
    When N < D those converge slowly (the maximum lies on a long ridge and can take hundreds
    of iterations), so we maximise the same evidence with β profiled out in closed form:
    a one-dimensional search over log λ, a log-spaced grid then golden-section refinement,
    for all targets at once. Beyond the searched range the profile is flat to within rounding.
    """
    if len(sig) == 0:  # constant-zero features: the noise-only model
        return _profile_log_evidence(np.zeros(z2.shape[1]), sig, np.zeros((0, z2.shape[1])), outside, n)
    lo, hi = math.log(sig.min()) - 20, math.log(sig.max()) + 20
    grid = np.linspace(lo, hi, 81)
    values = np.stack([_profile_log_evidence(np.full(z2.shape[1], g), sig, z2, outside, n) for g in grid])
    best = values.argmax(0)
    step = grid[1] - grid[0]
    a, b = grid[best] - step, grid[best] + step
    golden = (math.sqrt(5) - 1) / 2
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = (_profile_log_evidence(v, sig, z2, outside, n) for v in (c, d))
    for _ in range(40):  # the bracket shrinks to 2·step·0.618⁴⁰ ≈ 1e-9 of log λ
        left = fc >= fd
        a, b = np.where(left, a, c), np.where(left, d, b)
        c, d = np.where(left, b - golden * (b - a), d), np.where(left, c, a + golden * (b - a))
        fc, fd = (np.where(left, _profile_log_evidence(c, sig, z2, outside, n), fd),
                  np.where(left, fc, _profile_log_evidence(d, sig, z2, outside, n)))
    return np.maximum(np.maximum(fc, fd), values.max(0))


def logme(features, labels) -> float:
    """LogME (You et al., 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning").

    For each class c, the one-hot target column y_c is explained by a Bayesian linear model
    on the features, y = Xw + noise with w ~ N(0, I/α) and noise ~ N(0, I/β); α and β
    maximise the evidence p(y_c | X, α, β), computed from the spectrum of X (see
    :func:`_max_log_evidence`). The score is the maximum log evidence, averaged over classes
    and divided by N. The features are used as given (no centring), as in the paper.
    """
    x = _features(features)
    y, n_classes = _labels(labels, len(x))
    n = len(x)
    u, sig = _span(x)
    onehot = np.eye(n_classes)[y]
    z = u.T @ onehot  # targets in the span's basis
    # Energy of each target outside the span (none when the span is everything, k = N).
    outside = np.clip(onehot.sum(0) - (z ** 2).sum(0), 0.0, None) if len(sig) < n else np.zeros(n_classes)
    return float(_max_log_evidence(sig, z ** 2, outside, n).mean() / n)


# -- regularised H-score --------------------------------------------------------------------------

def ledoit_wolf_shrinkage(centred: np.ndarray) -> tuple[float, float]:
    """Ledoit-Wolf (2004) shrinkage δ and target scale μ for already centred data ``(N, D)``.

    The shrunk covariance is (1 - δ)·S + δ·μ·I with S = XᵀX/N and μ = tr(S)/D; this is
    scikit-learn's ``ledoit_wolf``, computed from the N × N Gram matrix K = XXᵀ instead of
    D × D matrices: |S|² = |K|²/N² and Σₖ |xₖxₖᵀ - S|² = Σₖ Kₖₖ² - |K|²/N.
    """
    n, d = centred.shape
    k = centred @ centred.T if n <= d else None
    if k is not None:
        fro2 = float((k ** 2).sum())
        diag2 = float((np.diag(k) ** 2).sum())
        trace = float(np.trace(k))
    else:  # N > D: the D × D covariance is the smaller matrix
        fro2 = float(((centred.T @ centred) ** 2).sum())
        diag2 = float(((centred ** 2).sum(1) ** 2).sum())
        trace = float((centred ** 2).sum())
    mu = trace / (n * d)
    dispersion = fro2 / n ** 2 - mu ** 2 * d  # |S - μI|², times D
    if dispersion <= 0:  # S is already a multiple of I
        return 0.0, mu
    spread = (diag2 - fro2 / n) / n ** 2  # estimation error of S, times D
    return min(spread, dispersion) / dispersion, mu


def regularized_hscore(features, labels) -> float:
    """Regularised H-score (Ibrahim et al., 2022, "Newer is not always better: Rethinking
    transferability metrics, their peculiarities, stability and performance"; the H-score
    of Bao et al., 2019, "An information-theoretic approach to transferability in task
    transfer learning").

    H = tr(cov_δ(f)⁻¹ · (1 - δ)·cov(E[f | y])), with cov_δ the Ledoit-Wolf shrinkage
    covariance of the features and δ its shrinkage; the between-class covariance gets the
    same factor (1 - δ) as the empirical part of cov_δ, following Ibrahim et al. Both
    covariances use 1/N. The plain H-score's inverse of a rank-deficient covariance is what
    makes it unstable when N is small; shrinkage makes it well defined for any N and D.
    """
    x = _features(features)
    y, n_classes = _labels(labels, len(x))
    n = len(x)
    centred = x - x.mean(0)
    delta, mu = ledoit_wolf_shrinkage(centred)
    u, sig = _span(centred)
    if len(sig) == 0:  # constant features: no between-class variance to explain
        return 0.0
    coords = u * np.sqrt(sig)  # the examples in the span's orthonormal basis
    means, _ = _class_means(coords, y, n_classes)
    # In that basis cov_δ is diagonal, (1 - δ)σᵢ/N + δμ, and outside the span E[f|y] has no part.
    between = (means[y] ** 2).sum(0) / n
    return float((1 - delta) * (between / ((1 - delta) * sig / n + delta * mu)).sum())


# -- NCE and LEEP -----------------------------------------------------------------------------

def nce(labels, source_probs) -> float:
    """NCE (Tran et al., 2019, "Transferability and Hardness of Supervised Classification Tasks").

    The negative conditional entropy -H(Y | Z) of the target labels Y given the source
    model's predicted label Z (its most probable source class), from their empirical joint
    distribution on the support set. At most 0; 0 when Z determines Y.
    """
    p = _source_probs(source_probs, "NCE")
    y, n_classes = _labels(labels, len(p))
    joint = np.zeros((n_classes, p.shape[1]))
    np.add.at(joint, (y, p.argmax(1)), 1.0 / len(p))
    p_z = joint.sum(0)
    nz = joint > 0
    return float((joint[nz] * np.log((joint / np.where(p_z > 0, p_z, 1.0))[nz])).sum())


def leep(labels, source_probs) -> float:
    """LEEP (Nguyen et al., 2020, "LEEP: A New Measure to Evaluate Transferability of Learned Representations").

    The empirical joint P(y, z) = (1/N) Σᵢ θ_z(xᵢ)·[yᵢ = y] of target labels and the source
    model's soft predictions θ(x) gives a classifier of the target labels,
    p(y | x) = Σ_z P(y | z)·θ_z(x); LEEP is its mean log-likelihood on the support set.
    """
    p = _source_probs(source_probs, "LEEP")
    y, n_classes = _labels(labels, len(p))
    joint = np.eye(n_classes)[y].T @ p / len(p)  # (C, Z)
    p_z = joint.sum(0)
    conditional = joint / np.where(p_z > 0, p_z, 1.0)  # P(y | z); unused source classes get 0
    eep = (p * conditional[y]).sum(1)  # Σ_z θ_z(xᵢ) P(yᵢ | z) > 0 for every i
    return float(np.log(eep).mean())


# -- TransRate ----------------------------------------------------------------------------------

def transrate(features, labels, *, eps2: float = 1e-4) -> float:
    """TransRate (Huang et al., 2022, "Frustratingly Easy Transferability Estimation").

    The coding-rate estimate of the mutual information between features and labels,
    R(Z, ε) - R(Z, ε | Y), on centred features Z, with R(Z, ε) = ½ log det(I + ZᵀZ/(n ε²)) and
    R(Z, ε | Y) = Σ_c (n_c/n)·R(Z_c, ε), Z_c the examples of class c (the weighting of the
    maximal coding rate reduction of Yu et al., 2020). ``eps2`` is ε², the distortion the
    code tolerates; the dimension factor d of some statements of R is absorbed into it.
    The score depends on the features' scale, as in the paper.
    """
    x = _features(features)
    y, n_classes = _labels(labels, len(x))
    z = x - x.mean(0)

    def rate(part: np.ndarray) -> float:
        return 0.5 * float(np.log1p(_gram_eigvals(part) / (len(part) * eps2)).sum())

    conditional = sum((y == c).mean() * rate(z[y == c]) for c in range(n_classes))
    return rate(z) - conditional


# -- SFDA ---------------------------------------------------------------------------------------

def _fda_posteriors(x: np.ndarray, y: np.ndarray, n_classes: int, shrinkage: float | None,
                    a: float) -> tuple[np.ndarray, float]:
    """Class posteriors of the regularised Fisher discriminant fitted on (x, y), and its shrinkage λ.

    The within-class scatter is shrunk toward a multiple of the identity scaled to its own
    size, S_W' = (1 - λ)·S_W + λ·(tr S_W / D)·I (D the feature dimension), as in the
    reference implementation (TencentARC/SFDA). Works in the span of the centred examples,
    which holds every class mean and every within-class deviation: outside it S_W' is
    λ·(tr S_W / D)·I and no mean or example has a component there, so the discriminant
    found in the span is exactly the one of the full space, at O(N²D) cost.
    """
    n, d = x.shape
    priors = np.bincount(y, minlength=n_classes) / n
    u, sig = _span(x - x.mean(0))
    if len(sig) == 0:
        raise ScoreNotApplicable("SFDA needs features that vary; these are constant")
    coords = u * np.sqrt(sig)
    means, _ = _class_means(coords, y, n_classes)
    within = coords - means[y]
    s_w = within.T @ within / n  # Σ_c π_c cov_c (the same trace as in the full space)
    scale = float(np.trace(s_w)) / d
    if scale <= float(sig.sum()) / n / d * 1e-12:
        # Every class is a single point (1-shot support, or duplicated examples): S_W = 0, and
        # the target λ·(tr S_W / D)·I is 0 too, so the discriminant is undefined.
        raise ScoreNotApplicable("SFDA needs within-class scatter: at least 2 different examples in a class "
                                 "(1-shot support has none)")
    if shrinkage is None:  # adaptive strength: strong when the within-class scatter is small
        shrinkage = max(math.exp(-a * max(float(np.linalg.eigvalsh(s_w)[-1]), 0.0)), 1e-10)
    s_w = (1 - shrinkage) * s_w + shrinkage * scale * np.eye(len(sig))
    s_b = (means * priors[:, None]).T @ means  # Σ_c π_c μ_c μ_cᵀ (the coordinates are centred)
    # The Fisher space: the top C-1 generalised eigenvectors, scaled so that Uᵀ S_W' U = I.
    # The reference code keeps all D of them (and adds λ·(tr S_B / D)·I to S_B), which gives
    # the same posteriors: S_B has rank C-1, and the Gaussian discriminant with covariance
    # S_W' depends only on the C-1 directions S_W'⁻¹(μ_c - μ_c').
    _, vecs = scipy.linalg.eigh(s_b, s_w)
    proj = vecs[:, ::-1][:, :min(n_classes - 1, len(sig))]
    z, m = coords @ proj, means @ proj
    logits = z @ m.T - 0.5 * (m ** 2).sum(1) + np.log(priors)
    return _softmax(logits), shrinkage


def sfda(features, labels, *, a: float = 5.0) -> float:
    """SFDA (Shao et al., 2022, "Not All Models Are Equal: Predicting Model Transferability in
    a Self-challenging Fisher Space", arXiv:2207.03036).

    1. Regularised FDA: the Gaussian discriminant (priors π_c, shared covariance) in the
       Fisher space of S_B and the shrunk within-class scatter
       S_W' = (1 - λ)·S_W + λ·(tr S_W / D)·I, with the adaptive strength
       λ = exp(-a·σ_max(S_W)) (a = 5 by default; σ_max is the exact largest eigenvalue,
       which the reference code estimates by three rounds of power iteration).
    2. Self-challenge (ConfMix): each example moves towards the mean of the other classes'
       means, x' = p·x + (1-p)·μ̄_(not its class), by its softened confidence p (a second
       softmax of the first stage's posteriors, so even confident examples are mixed), and
       the FDA of step 1 is refitted on x' with the same λ.

    The score is the mean posterior probability of the true class in the second stage.

    **Conventions.** Scatter matrices use 1/N (``np.cov(bias=True)``); the features are used
    as given (the discriminant is invariant to their offset). Because the target is scaled
    by tr S_W / D, S_W' scales with the features, so the posteriors are invariant to a
    common rescaling of the features *except through λ*, which depends on σ_max(S_W) in
    absolute units (tiny features get strong shrinkage). When N ≤ D, S_W is singular and the
    discriminant can separate any support set: the score then saturates near 1, and ties
    between models are common (:mod:`.metrics` breaks ties at random). Does not apply when
    no class has two different examples (1-shot support): S_W is then 0.
    """
    x = _features(features)
    y, n_classes = _labels(labels, len(x))
    posteriors, shrinkage = _fda_posteriors(x, y, n_classes, None, a)
    confidence = _softmax(posteriors)[np.arange(len(x)), y][:, None]
    means, _ = _class_means(x, y, n_classes)
    others = (means.sum(0) - means) / (n_classes - 1)  # the mean of the other classes' means
    mixed = confidence * x + (1 - confidence) * others[y]
    posteriors, _ = _fda_posteriors(mixed, y, n_classes, shrinkage, a)
    return float(posteriors[np.arange(len(x)), y].mean())


# -- leave-one-out nearest prototype ------------------------------------------------------------

def loo_prototype_accuracy(features, labels) -> float:
    """Leave-one-out accuracy of the nearest class mean (Prototypical Networks, Snell et al., 2017).

    Each support example is classified by squared Euclidean distance to the class means of
    the other examples. Its own class's mean without it is (n_c·μ_c - x)/(n_c - 1), whose
    distance to x is n_c/(n_c - 1) times |x - μ_c|, so no mean is recomputed. A tie with
    another class counts as an error.

    At 1 shot the held-out example's class has no example left, so there is no prototype to
    classify it against: the score does not apply when any class has a single example.
    """
    x = _features(features)
    y, n_classes = _labels(labels, len(x))
    means, counts = _class_means(x, y, n_classes)
    if counts.min() < 2:
        raise ScoreNotApplicable("leave-one-out needs at least 2 examples per class; a class here has 1 "
                                 "(1-shot support)")
    d2 = ((x ** 2).sum(1)[:, None] - 2 * x @ means.T + (means ** 2).sum(1)[None]).clip(0.0)
    rows = np.arange(len(x))
    own = d2[rows, y] * (counts[y] / (counts[y] - 1)) ** 2
    d2[rows, y] = np.inf
    return float((own < d2.min(1)).mean())


# -- nearest neighbours ----------------------------------------------------------------------------

def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def knn_loo_accuracy(features, labels) -> float:
    """Leave-one-out accuracy of the 1-nearest-neighbour classifier (cosine similarity) on the
    support features: the simple k-NN signal that large studies find matches or beats
    published transferability scores (e.g. Agostinelli et al., 2022, arXiv:2204.01403).
    Invariant to the features' scale. A tie counts as an error. Does not apply at 1 shot
    (the held-out example's class has no other example)."""
    x = _features(features)
    y, n_classes = _labels(labels, len(x))
    if np.bincount(y, minlength=n_classes).min() < 2:
        raise ScoreNotApplicable("leave-one-out needs at least 2 examples per class; a class here has 1 "
                                 "(1-shot support)")
    sim = _cosine(x, x)
    np.fill_diagonal(sim, -np.inf)
    best = sim.max(1)
    same = np.where(y[:, None] == y[None, :], sim, -np.inf).max(1)
    other = np.where(y[:, None] != y[None, :], sim, -np.inf).max(1)
    return float(((same == best) & (same > other)).mean())


def view_nearest_neighbour(features, views, labels) -> float:
    """Fraction of augmented views whose nearest support example (cosine similarity, the
    view's own image included) has the view's class.

    ``views[i]`` are the features of a slightly changed copy of support image ``i``
    (:func:`~fewshot.select.metafeatures.augmented_views`). A model whose features keep an
    image closer to its own class than to any other under a small change separates the
    task's classes robustly; unlike leave-one-out it is defined at 1 shot. Invariant to
    the features' scale. A tie counts as an error.
    """
    x = _features(features)
    v = _features(views)
    if v.shape != x.shape:
        raise DataError(f"views must have the features' shape {x.shape}, got {v.shape}")
    y, _ = _labels(labels, len(x))
    sim = _cosine(v, x)
    same = np.where(y[:, None] == y[None, :], sim, -np.inf).max(1)
    other = np.where(y[:, None] != y[None, :], sim, -np.inf).max(1)
    return float((same > other).mean())


# -- registry -----------------------------------------------------------------------------------

Score = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], float]

#: Every score by name, as ``score(features, labels, source_probs) -> float``, in the
#: order :func:`compute_scores` reports them; a plug-in may register more.
SCORES: Registry[Score] = Registry("score")
for _name, _score in {
    "logme": lambda f, y, p=None: logme(f, y),
    "hscore": lambda f, y, p=None: regularized_hscore(f, y),
    "nce": lambda f, y, p=None: nce(y, p),
    "leep": lambda f, y, p=None: leep(y, p),
    "transrate": lambda f, y, p=None: transrate(f, y),
    "sfda": lambda f, y, p=None: sfda(f, y),
    "loo_proto": lambda f, y, p=None: loo_prototype_accuracy(f, y),
    "knn_loo": lambda f, y, p=None: knn_loo_accuracy(f, y),
}.items():
    SCORES.register(_name, _score)
del _name, _score


def compute_scores(features, labels, source_probs=None, *, names=None,
                   reasons: dict[str, str] | None = None) -> dict[str, float | None]:
    """Every score in ``names`` (default: all of :data:`SCORES`) on one task's support set.

    A score that does not apply to the task is ``None``; when ``reasons`` is a dict, it
    receives ``name -> why``. Invalid input raises :class:`~fewshot.errors.DataError` before
    any score runs.
    """
    names = list(SCORES) if names is None else list(names)
    scores = [SCORES[name] for name in names]  # an unknown name: one line naming the known ones
    x, y, _ = check_task(features, labels, source_probs)
    out: dict[str, float | None] = {}
    for name, score in zip(names, scores):
        try:
            out[name] = float(score(x, y, source_probs))
        except ScoreNotApplicable as exc:
            out[name] = None
            if reasons is not None:
                reasons[name] = str(exc)
    return out
