"""The selection metrics as the anchors compute them: each equal to scipy's on fixed rankings,
and weighted τ's three weightings on a case computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fewshot.errors import DataError
from fewshot.select.evaluation import evaluation_table
from fewshot.select.metrics import (kendall_tau, per_task, relative_top1, selection_report, top1_regret,
                                    weighted_tau, weighted_tau_true)

# Fixed rankings with ties in both the truth and the predictions.
TRUE = np.array([[81.0, 64.0, 64.0, 90.0, 55.0, 72.0],
                 [40.0, 45.0, 70.0, 70.0, 20.0, 66.0],
                 [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]])
PRED = np.array([[0.3, 0.1, 0.2, 0.2, -1.0, 0.5],
                 [1.0, 2.0, 3.0, 2.5, 0.0, 4.0],
                 [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])


@pytest.mark.parametrize("t", range(len(TRUE)))
def test_taus_equal_scipy(t):
    true, pred = TRUE[t], PRED[t]
    assert kendall_tau(true, pred) == pytest.approx(stats.kendalltau(true, pred).statistic, abs=1e-12)
    # scipy's default (rank=True), as LogME and SFDA report it: symmetric in its arguments.
    assert weighted_tau(true, pred) == pytest.approx(stats.weightedtau(pred, true).statistic, abs=1e-12)
    assert weighted_tau(true, pred) == pytest.approx(stats.weightedtau(true, pred).statistic, abs=1e-12)
    # Model Spider's: weightedtau(labels, outputs, rank=None), the truth ranks.
    assert weighted_tau_true(true, pred) == pytest.approx(
        stats.weightedtau(true, pred, rank=None).statistic, abs=1e-12)
    assert weighted_tau(true, pred, "predicted") == pytest.approx(
        stats.weightedtau(pred, true, rank=None).statistic, abs=1e-12)


def test_weightings_by_hand():
    # The truly best model is predicted worst. Hyperbolic weights w(r) = 1/(r+1), a pair
    # weighs w(r_i) + w(r_j). By the true ranks (0, 1, 2): pairs (0,1) and (0,2) are
    # discordant, weights 3/2 and 4/3; (1,2) concordant, 5/6; total 11/3 -> τ = -6/11.
    # By the predicted ranks (model 0 has rank 2): discordant 4/3 and 5/6, concordant 3/2 -> -2/11.
    true, pred = np.array([3.0, 2.0, 1.0]), np.array([1.0, 3.0, 2.0])
    assert weighted_tau_true(true, pred) == pytest.approx(-6 / 11)
    assert weighted_tau(true, pred, "predicted") == pytest.approx(-2 / 11)
    assert weighted_tau(true, pred) == pytest.approx(-4 / 11)  # scipy's default: the mean of the two
    with pytest.raises(DataError, match="weighting"):
        weighted_tau(true, pred, "sideways")


def test_regret_and_relative_top1_by_hand():
    # Task 0: the pick is model 5 (72) against the best 90; ties for nothing else matter.
    assert top1_regret(TRUE[0], PRED[0]) == pytest.approx(18.0)
    assert relative_top1(TRUE[0], PRED[0]) == pytest.approx(72 / 90)
    # Task 2: predictions reversed: the pick is the worst model.
    assert top1_regret(TRUE[2], PRED[2]) == pytest.approx(50.0)
    assert relative_top1(TRUE[2], PRED[2]) == pytest.approx(10 / 60)


def test_unscored_models_are_left_out_of_every_tau():
    pred = PRED[1].copy()
    pred[[0, 4]] = np.nan
    keep = ~np.isnan(pred)
    assert weighted_tau_true(TRUE[1], pred) == pytest.approx(
        stats.weightedtau(TRUE[1][keep], pred[keep], rank=None).statistic)
    assert math.isnan(weighted_tau(np.ones(6), PRED[1]))  # nothing to rank


def test_report_and_table_carry_both_weightings():
    metrics = per_task(TRUE, PRED)
    assert metrics["weighted_tau_true"] == pytest.approx([weighted_tau_true(t, p) for t, p in zip(TRUE, PRED)])
    report = selection_report(TRUE, PRED, accuracy_predictions=False, resamples=200)
    assert report["weighted_tau"]["mean"] == pytest.approx(np.mean([weighted_tau(t, p) for t, p in zip(TRUE, PRED)]))
    lines = evaluation_table({"x": report})
    assert "weighted τ (true ranking)" in lines[0] and lines[2].count("|") == lines[0].count("|")
