"""N-LEEP and PARC on small cases computed by hand, and against transparent re-computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from fewshot.select.nleep_parc import nleep, parc
from fewshot.select.scores import SCORES, ScoreNotApplicable, compute_scores


def gaussian_task(way=4, shot=5, dim=40, separation=1.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(way), shot)
    return rng.normal(size=(way, dim))[labels] * separation + rng.normal(size=(len(labels), dim)), labels


# -- PARC -----------------------------------------------------------------------------------------

def test_parc_by_hand():
    labels = np.array([0, 0, 1, 1])
    # Columns are ±1 with mean 0 and std 1, so standardising leaves them; rows of 2 values
    # correlate exactly +1 or -1, so the feature dissimilarity is 0 or 2.
    aligned = np.array([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0]])
    # Same-class pairs alike, other pairs not: the two dissimilarity matrices agree in order.
    assert parc(aligned, labels, dims=None) == pytest.approx(100.0)
    # Rows alternate: feature dissimilarities over pairs (01, 02, 03, 12, 13, 23) are
    # (2, 0, 2, 2, 0, 2), label ones (0, 2, 2, 2, 2, 0). Two binary variables with 4 of 6
    # "high" each and 2 of 6 high together: Pearson (2/6 - 4/9) / (2/9) = -1/2.
    alternating = np.array([[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])
    assert parc(alternating, labels, dims=None) == pytest.approx(-50.0)


def reference_parc(x, y, dims=32):
    """PCA to `dims` (numerical null components dropped), standardise, then every pair by a loop."""
    pca = PCA(n_components=min(dims, *x.shape), svd_solver="full", random_state=0)
    z = pca.fit_transform(x)
    z = z[:, pca.explained_variance_ > 1e-10 * pca.explained_variance_.max()]
    z = (z - z.mean(0)) / z.std(0)
    onehot = np.eye(y.max() + 1)[y]

    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        return (a @ b) / math.sqrt((a @ a) * (b @ b))

    f, l = [], []
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            f.append(1 - pearson(z[i], z[j]))
            l.append(1 - pearson(onehot[i], onehot[j]))
    return 100 * pearson(stats.rankdata(f), stats.rankdata(l))


@pytest.mark.parametrize("way,shot,dim", [(4, 5, 40), (5, 2, 1600), (3, 20, 8)])
def test_parc_equals_a_transparent_recomputation(way, shot, dim):
    x, y = gaussian_task(way, shot, dim)
    assert parc(x, y) == pytest.approx(reference_parc(x, y), abs=1e-9)


# -- N-LEEP ---------------------------------------------------------------------------------------

def two_clusters(seed=0):
    """Two tight clusters of 4 examples, 100 apart."""
    rng = np.random.default_rng(seed)
    return np.repeat([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0]], 4, axis=0) + rng.normal(0, 0.1, size=(8, 3))


def test_nleep_by_hand():
    x = two_clusters()
    # The mixture's two components are the clusters, each example's posterior is one-hot.
    # Labels follow the clusters: P(y | z) is 1 for the right class: N-LEEP = log 1 = 0.
    assert nleep(x, np.array([0, 0, 0, 0, 1, 1, 1, 1]), components=2) == pytest.approx(0.0, abs=1e-9)
    # Each cluster holds both classes equally: P(y | z) = 1/2 for every example.
    assert nleep(x, np.array([0, 0, 1, 1, 0, 0, 1, 1]), components=2) == pytest.approx(math.log(0.5), abs=1e-9)


def reference_nleep(x, y, ratio=5):
    """PCA to 80 % of the variance, the same seeded mixture, LEEP by loops over classes and components."""
    z = PCA(n_components=0.8, svd_solver="full", random_state=0).fit_transform(x)
    classes = y.max() + 1
    k = min(ratio * classes, len(x) // 2)
    theta = GaussianMixture(n_components=k, covariance_type="full", random_state=0).fit(z).predict_proba(z)
    joint = np.zeros((classes, k))
    for i in range(len(x)):
        for c in range(k):
            joint[y[i], c] += theta[i, c] / len(x)
    total = 0.0
    for i in range(len(x)):
        total += math.log(sum(theta[i, c] * joint[y[i], c] / joint[:, c].sum() for c in range(k)))
    return total / len(x)


@pytest.mark.parametrize("way,shot,dim,separation", [(4, 5, 40, 0.7), (3, 10, 6, 0.5), (5, 3, 200, 0.3)])
def test_nleep_equals_a_transparent_recomputation(way, shot, dim, separation):
    x, y = gaussian_task(way, shot, dim, separation)
    assert nleep(x, y) == pytest.approx(reference_nleep(x, y), abs=1e-9)


# -- both -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("score", [nleep, parc])
def test_one_shot_and_constant_features_do_not_apply(score):
    x, y = gaussian_task(way=5, shot=1)
    with pytest.raises(ScoreNotApplicable, match="2 examples per class"):
        score(x, y)
    with pytest.raises(ScoreNotApplicable, match="vary"):
        score(np.ones((8, 4)), np.repeat([0, 1], 4))


def test_registered_beside_the_other_scores():
    x, y = gaussian_task(way=4, shot=5, dim=40, separation=1.5)
    scores = compute_scores(x, y)
    assert {"nleep", "parc"} <= set(SCORES)
    assert scores["nleep"] == pytest.approx(nleep(x, y)) and scores["parc"] == pytest.approx(parc(x, y))
    reasons = {}
    assert compute_scores(*gaussian_task(way=4, shot=1), reasons=reasons)["parc"] is None and "parc" in reasons
