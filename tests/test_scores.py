"""Transferability scores: they order tasks sensibly, match direct computations, and handle few-shot shapes."""

from __future__ import annotations

import math
import time

import numpy as np
from threadpoolctl import threadpool_limits
import pytest
import torch
from sklearn.covariance import ledoit_wolf

from fewshot.errors import ConfigError, DataError
from fewshot.select.scores import (SCORES, ScoreNotApplicable, compute_scores, ledoit_wolf_shrinkage, leep, logme, sfda,
                                   nce, regularized_hscore)


def make_task(way: int, shot: int, dim: int, separation: float, seed: int = 0):
    """Gaussian classes: features, labels, and a source model's probabilities over 2·way classes
    that mostly put each target class on its own pair of source classes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(way), shot)
    features = rng.normal(size=(way, dim))[labels] * separation + rng.normal(size=(len(labels), dim))
    logits = rng.normal(size=(len(labels), 2 * way))
    logits[np.arange(len(labels)), 2 * labels + rng.integers(0, 2, len(labels))] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return features, labels, probs


@pytest.mark.parametrize("name", sorted(SCORES))
def test_each_score_ranks_a_separable_task_above_random_labels(name):
    features, labels, probs = make_task(way=5, shot=20, dim=16, separation=1.5)
    shuffled = np.random.default_rng(1).permutation(labels)
    good = SCORES[name](features, labels, probs)
    bad = SCORES[name](features, shuffled, probs)
    assert math.isfinite(good) and math.isfinite(bad)
    assert good > bad, (name, good, bad)


def textbook_log_evidence(x: np.ndarray, y: np.ndarray, log_alpha: np.ndarray,
                          log_beta: np.ndarray) -> np.ndarray:
    """log p(y | x, α, β) on a grid, from the textbook formula of the Bayesian linear model:
    N/2 log β + D/2 log α - N/2 log 2π - β/2 |xm - y|² - α/2 |m|² - ½ log|A|,
    with A = αI + βxᵀx and m = β A⁻¹ xᵀy."""
    n, d = x.shape
    alpha, beta = np.meshgrid(np.exp(log_alpha), np.exp(log_beta), indexing="ij")
    out = np.empty(alpha.shape)
    for idx in np.ndindex(alpha.shape):
        a, b = alpha[idx], beta[idx]
        precision = a * np.eye(d) + b * x.T @ x
        m = b * np.linalg.solve(precision, x.T @ y)
        out[idx] = (n / 2 * np.log(b) + d / 2 * np.log(a) - n / 2 * np.log(2 * np.pi) - b / 2 * np.sum((x @ m - y) ** 2)
                    - a / 2 * m @ m - 0.5 * np.linalg.slogdet(precision)[1])
    return out


def best_on_grid(x: np.ndarray, y: np.ndarray) -> float:
    """The maximum of the textbook evidence: a coarse log grid, then two finer grids around the best point."""
    log_alpha, log_beta = np.linspace(-10, 14, 49), np.linspace(-10, 20, 61)
    for _ in range(3):
        values = textbook_log_evidence(x, y, log_alpha, log_beta)
        i, j = np.unravel_index(values.argmax(), values.shape)
        da, db = log_alpha[1] - log_alpha[0], log_beta[1] - log_beta[0]
        best = values.max()
        log_alpha = np.linspace(log_alpha[i] - da, log_alpha[i] + da, 21)
        log_beta = np.linspace(log_beta[j] - db, log_beta[j] + db, 21)
    return max(best, textbook_log_evidence(x, y, log_alpha, log_beta).max())


@pytest.mark.parametrize("n, d", [(24, 4), (6, 9)])
def test_logme_is_the_maximum_evidence_averaged_over_classes(n, d):
    rng = np.random.default_rng(n)
    labels = np.arange(n) % 3
    x = rng.normal(size=(n, d)) + rng.normal(size=(3, d))[labels]
    direct = np.mean([best_on_grid(x, (labels == c).astype(float)) for c in range(3)]) / n
    score = logme(x, labels)
    # LogME is the exact maximum: at least the grid's best, and the grid gets close to it.
    assert score >= direct - 1e-9
    assert score == pytest.approx(direct, abs=2e-3)


def test_ledoit_wolf_and_hscore_match_a_direct_computation():
    rng = np.random.default_rng(0)
    for n, d in [(40, 6), (8, 30)]:
        labels = np.arange(n) % 4
        x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d) + rng.normal(size=(4, d))[labels]
        centred = x - x.mean(0)
        covariance, delta = ledoit_wolf(x)
        ours, mu = ledoit_wolf_shrinkage(centred)
        assert ours == pytest.approx(delta, rel=1e-9)
        means = np.stack([centred[labels == c].mean(0) for c in range(4)])[labels]
        direct = np.trace(np.linalg.inv(covariance) @ ((1 - delta) * means.T @ means / n))
        assert regularized_hscore(x, labels) == pytest.approx(direct, rel=1e-8)


def test_nce_and_leep_on_hand_made_cases():
    labels = np.array([0, 0, 1, 1])
    certain = np.eye(3)[[0, 0, 2, 2]]  # the source class determines the target class
    assert nce(labels, certain) == pytest.approx(0.0, abs=1e-12)
    assert leep(labels, certain) == pytest.approx(0.0, abs=1e-12)
    useless = np.full((4, 3), 1 / 3)
    assert nce(labels, useless) == pytest.approx(-math.log(2))
    assert leep(labels, useless) == pytest.approx(-math.log(2))


@pytest.mark.parametrize("shot", [1, 5])
def test_few_shot_support_sets_with_more_dimensions_than_examples(shot):
    features, labels, probs = make_task(way=5, shot=shot, dim=1600, separation=0.5)
    reasons: dict[str, str] = {}
    scores = compute_scores(features, labels, probs, reasons=reasons)
    assert set(scores) == set(SCORES)
    for name, value in scores.items():
        assert (value is None and name in reasons) or math.isfinite(value), (name, value)
    if shot == 1:
        for name in ("loo_proto", "knn_loo", "sfda"):
            assert scores[name] is None and "1-shot" in reasons[name]
        for name in ("nleep", "parc"):
            assert scores[name] is None and "2 examples per class" in reasons[name]
        assert set(reasons) == {"loo_proto", "knn_loo", "sfda", "nleep", "parc"}
    else:
        assert not reasons and scores["loo_proto"] == 1.0 and scores["knn_loo"] == 1.0


def test_scores_without_source_predictions_do_not_apply():
    features, labels, _ = make_task(way=3, shot=4, dim=8, separation=1.0)
    reasons: dict[str, str] = {}
    scores = compute_scores(features, labels, reasons=reasons)
    assert scores["nce"] is None and scores["leep"] is None
    assert set(reasons) == {"nce", "leep"} and all("source model" in r for r in reasons.values())
    assert all(math.isfinite(v) for k, v in scores.items() if k not in reasons)
    with pytest.raises(ScoreNotApplicable, match="source model"):
        nce(labels, None)


def test_torch_tensors_and_string_labels_are_accepted():
    features, labels, probs = make_task(way=3, shot=4, dim=8, separation=1.0)
    names = np.array(["cat", "dog", "eel"])[labels]
    a = compute_scores(torch.from_numpy(features).float(), names, torch.from_numpy(probs))
    b = compute_scores(features.astype(np.float32), labels, probs)
    assert a == pytest.approx(b)


def test_bad_input_is_a_one_line_error():
    features, labels, probs = make_task(way=3, shot=4, dim=8, separation=1.0)
    nan = features.copy()
    nan[2, 3] = np.nan
    inf = features.copy()
    inf[0, 0] = np.inf
    cases = [
        ((nan, labels), "NaN"),
        ((inf, labels), "NaN or infinite"),
        ((features, labels[:-1]), "one per example"),
        ((features, np.zeros_like(labels)), "at least 2 classes"),
        ((features[0], labels[:1]), "(examples, dimensions)"),
        ((features, labels, probs[:-1]), "rows"),
        ((features, labels, -probs), "probabilities"),
        ((features, labels, probs * 2), "softmax"),
    ]
    for args, fragment in cases:
        with pytest.raises(DataError) as info:
            compute_scores(*args)
        message = str(info.value)
        assert fragment in message and "\n" not in message, (fragment, message)
    with pytest.raises(ConfigError, match="unknown score"):
        compute_scores(features, labels, names=["logme", "nope"])


def test_scores_are_fast_on_a_wide_support_set():
    features, labels, probs = make_task(way=20, shot=5, dim=1600, separation=0.5)
    # Every score works in the N-dimensional span of the examples: tens of milliseconds, where
    # D × D algebra (1600³) would take seconds. CPU time of one BLAS thread: other processes
    # on a shared machine do not count, and idle BLAS threads spinning for work do not either.
    with threadpool_limits(1):
        start = time.process_time()
        compute_scores(features, labels, probs)
        assert time.process_time() - start < 1.0


def _sfda_by_definition(x, y, a=5.0):
    """SFDA computed directly from its definition with D × D matrices: the Gaussian
    discriminant with covariance (1 - λ)·S_W + λ·(tr S_W / D)·I (the reference code's target),
    λ = exp(-a·σ_max(S_W)), then ConfMix toward the mean of the other classes' means and a
    second discriminant with the same λ."""
    classes = np.unique(y)

    def discriminant(x, lam):
        n, d = x.shape
        priors = np.array([(y == c).mean() for c in classes])
        means = np.stack([x[y == c].mean(0) for c in classes])
        s_w = sum(p * np.atleast_2d(np.cov(x[y == c].T, bias=True)) for p, c in zip(priors, classes))
        if lam is None:
            lam = max(math.exp(-a * np.linalg.eigvalsh(s_w)[-1]), 1e-10)
        inverse = np.linalg.inv((1 - lam) * s_w + lam * np.trace(s_w) / d * np.eye(d))
        logits = x @ inverse @ means.T - 0.5 * np.einsum("cd,de,ce->c", means, inverse, means) + np.log(priors)
        logits -= logits.max(1, keepdims=True)
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True), lam

    rows = np.arange(len(x))
    probs, lam = discriminant(x, None)
    soft = np.exp(probs) / np.exp(probs).sum(1, keepdims=True)
    confidence = soft[rows, y][:, None]
    means = np.stack([x[y == c].mean(0) for c in classes])
    others = (means.sum(0) - means) / (len(classes) - 1)
    probs, _ = discriminant(confidence * x + (1 - confidence) * others[y], lam)
    return float(probs[rows, y].mean())


@pytest.mark.parametrize("n_per_class,dim,scale", [(6, 5, 1.0), (6, 5, 0.05), (3, 20, 1.0), (3, 20, 0.05)])
def test_sfda_matches_its_definition_with_the_reference_shrinkage_target(n_per_class, dim, scale):
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(3), n_per_class)
    x = (rng.normal(size=(len(y), dim)) + 1.5 * rng.normal(size=(3, dim))[y] + 4.0) * scale
    assert sfda(x, y) == pytest.approx(_sfda_by_definition(x, y), abs=1e-6)


def test_sfda_does_not_apply_without_within_class_scatter():
    x, y = np.random.default_rng(0).normal(size=(4, 6)), np.arange(4)
    reasons: dict[str, str] = {}
    assert compute_scores(x, y, reasons=reasons)["sfda"] is None and "within-class" in reasons["sfda"]
