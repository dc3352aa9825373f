"""N-LEEP and PARC: the transferability scores of the recent model-selection papers, beside :mod:`.scores`.

Both need only a task's support features and labels (no source head), and both are
registered in :data:`~.scores.SCORES` when :mod:`fewshot.select` is imported. Neither
can say anything at 1 shot (no two examples share a class, so nothing in the features can
agree or disagree with the labels): there they raise :class:`~.scores.ScoreNotApplicable`.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from .scores import SCORES, ScoreNotApplicable, check_task, leep

# Components whose variance is below this fraction of the largest are numerical zeros
# (centring N examples leaves at most N - 1 directions): standardising one would blow
# rounding noise up to unit variance.
_NULL = 1e-10


def _principal(x: np.ndarray, components, seed: int) -> np.ndarray:
    """``x`` projected on its principal components (``components``: a count, or a fraction
    of the variance to keep), numerically-null ones dropped."""
    if not (x.std(0) > 0).any():  # nothing varies: no component to keep
        return x[:, :0]
    pca = PCA(n_components=components, svd_solver="full", random_state=seed)
    reduced = pca.fit_transform(x)
    variance = pca.explained_variance_
    keep = variance > _NULL * max(variance.max(initial=0.0), 0.0) if len(variance) else np.zeros(0, bool)
    return reduced[:, keep]


def _needs_shared_classes(y: np.ndarray, n_classes: int, score: str) -> None:
    if len(y) < 2 * n_classes:
        raise ScoreNotApplicable(f"{score} needs on average at least 2 examples per class "
                                 f"(a 1-shot support set has no pair of the same class)")


def nleep(features, labels, *, variance: float = 0.8, ratio: int = 5, components: int | None = None,
          seed: int = 0) -> float:
    """N-LEEP (Li et al., 2021, "Ranking Neural Checkpoints", arXiv:2011.11200).

    LEEP (:func:`~.scores.leep`) with a Gaussian mixture in place of the source head: the
    support features are reduced by PCA to the components that keep ``variance`` of their
    variance, a full-covariance Gaussian mixture is fitted to them (scikit-learn's EM,
    seeded), and its posterior probabilities over the components play the source model's
    class probabilities. The paper uses ``ratio`` = 5 components per target class; a
    few-shot support set has too few examples for that, so the count is capped at half
    the examples (two per component on average). ``components`` overrides the count.
    """
    x, y, n_classes = check_task(features, labels)
    _needs_shared_classes(y, n_classes, "N-LEEP")
    reduced = _principal(x, variance, seed)
    if reduced.shape[1] == 0:
        raise ScoreNotApplicable("N-LEEP needs features that vary across the support set")
    k = components if components is not None else min(ratio * n_classes, len(x) // 2)
    if not 1 <= k <= len(x):
        raise ScoreNotApplicable(f"N-LEEP cannot fit {k} mixture components to {len(x)} examples")
    mixture = GaussianMixture(n_components=k, covariance_type="full", random_state=seed).fit(reduced)
    return leep(y, mixture.predict_proba(reduced))


def parc(features, labels, *, dims: int | None = 32, seed: int = 0) -> float:
    """PARC (Bolya, Mittapalli and Hoffman, 2021, "Scalable Diverse Model Selection for
    Accessible Transfer Learning", NeurIPS, arXiv:2111.06977).

    Compares two dissimilarity matrices over pairs of support examples: one of the features,
    1 − Pearson correlation between the examples' feature vectors, and one of the labels,
    the same on one-hot labels (0 within a class, above 1 across classes). PARC is the
    Spearman correlation of their off-diagonal entries, × 100: high when examples of a class
    look alike and examples of different classes do not. As in the paper, the features are
    first reduced to their ``dims`` = 32 principal components (``None``: not reduced;
    numerically-null components dropped either way) and standardised per dimension.
    """
    x, y, n_classes = check_task(features, labels)
    _needs_shared_classes(y, n_classes, "PARC")
    if dims is not None:
        x = _principal(x, min(dims, *x.shape), seed)
    spread = x.std(0)
    x = (x[:, spread > 0] - x[:, spread > 0].mean(0)) / spread[spread > 0]
    if x.shape[1] < 2:
        raise ScoreNotApplicable("PARC needs features that vary in at least 2 directions across the support set")
    feature_rdm = 1.0 - np.corrcoef(x)
    # One-hot labels' 1 - correlation is 0 within a class and C/(C-1) across: two values,
    # written exactly (np.corrcoef's rounding would break their ties at random in the ranks).
    label_rdm = (y[:, None] != y[None, :]) * (n_classes / (n_classes - 1))
    upper = np.triu_indices(len(x), 1)
    if not np.isfinite(feature_rdm[upper]).all():
        raise ScoreNotApplicable("PARC needs every support example's features to vary across dimensions")
    return float(stats.spearmanr(feature_rdm[upper], label_rdm[upper]).statistic * 100.0)


SCORES.register("nleep", lambda f, y, p=None: nleep(f, y))
SCORES.register("parc", lambda f, y, p=None: parc(f, y))

__all__ = ["nleep", "parc"]
