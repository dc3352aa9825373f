"""Model selection: the selection metrics on constructed cases, and the meta-learner on held-out groups."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fewshot.errors import ConfigError, DataError
from fewshot.select.metalearner import (BestOnAverage, MetaLearner, Oracle, RandomPick, compare,
                                        feature_columns, leave_one_group_out, single_score)
from fewshot.select.metrics import best_in_top3, kendall_tau, selection_report, top1_regret, weighted_tau


# -- metrics ----------------------------------------------------------------------------------

def test_perfect_and_reversed_predictions():
    true = np.array([[70.0, 80.0, 60.0, 90.0], [55.0, 50.0, 65.0, 60.0]])
    perfect = selection_report(true, true / 100, accuracy_predictions=False)
    assert perfect["kendall_tau"]["mean"] == pytest.approx(1.0)
    assert perfect["weighted_tau"]["mean"] == pytest.approx(1.0)
    assert perfect["top1_regret"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert perfect["relative_top1"]["mean"] == 1.0 and perfect["best_in_top3"]["mean"] == 1.0
    reversed_ = selection_report(true, -true, accuracy_predictions=False)
    assert reversed_["kendall_tau"]["mean"] == pytest.approx(-1.0)
    assert reversed_["weighted_tau"]["mean"] == pytest.approx(-1.0)
    # The pick is the worst model: regrets 90 - 60 and 65 - 50.
    assert reversed_["top1_regret"]["mean"] == pytest.approx((30 + 15) / 2)
    assert reversed_["relative_top1"]["mean"] == pytest.approx((60 / 90 + 50 / 65) / 2)
    assert "mse" not in reversed_


def test_constructed_regret_top3_and_ties():
    true = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    assert top1_regret(true, np.array([0, 1, 0.5, 0.2, 0.1])) == pytest.approx(0.1)
    assert best_in_top3(true, np.array([0.3, 1, 0.9, 0.8, 0.1])) == 0.0  # the best is 4th
    assert best_in_top3(true, np.array([0.8, 1, 0.9, 0.8, 0.1])) == 1.0  # 3rd, tie broken by column order
    # Tied predictions: the first tied model is the pick, and a constant predictor ranks nothing.
    assert top1_regret(true, np.array([0.0, 0.0, 1.0, 1.0, 1.0])) == pytest.approx(0.2)
    assert kendall_tau(true, np.zeros(5)) == 0.0 and weighted_tau(true, np.zeros(5)) == 0.0
    assert math.isnan(kendall_tau(np.ones(5), true))  # nothing to rank: left out of the mean


def test_report_intervals_mse_and_bad_input():
    rng = np.random.default_rng(0)
    true = rng.uniform(50, 90, size=(40, 6))
    predicted = true + rng.normal(0, 3, size=true.shape)
    report = selection_report(true, predicted, accuracy_predictions=True, resamples=500, seed=1)
    for metric in report.values():
        assert metric["low"] <= metric["mean"] <= metric["high"]
    assert report["mse"]["mean"] == pytest.approx(((predicted - true) ** 2).mean())
    assert report["rmse"]["mean"] == pytest.approx(math.sqrt(report["mse"]["mean"]))
    assert 5 < report["mse"]["mean"] < 15
    assert report == selection_report(true, predicted, accuracy_predictions=True, resamples=500, seed=1)
    with pytest.raises(DataError, match="tasks, models"):
        selection_report(true, predicted[:, :3], accuracy_predictions=False)
    with pytest.raises(DataError, match="NaN"):
        selection_report(true, np.full_like(true, np.nan), accuracy_predictions=False)


# -- the meta-learner -------------------------------------------------------------------------

def synthetic_table(seed: int = 0, groups: int = 6, tasks: int = 12, models: int = 6) -> list[dict]:
    """Even groups: accuracy follows a per-task score (``score.useful``); odd groups: model size.
    ``task.shot`` tells the two apart; ``score.noise`` is a distractor."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(groups):
        follows_score = g % 2 == 0
        for t in range(tasks):
            for m in range(models):
                score = rng.normal()
                accuracy = 60 + (8 * score if follows_score else 3 * m) + rng.normal(0, 0.5)
                rows.append({"task": f"g{g}-t{t}", "group": f"g{g}", "model": f"m{m}",
                             "task.shot": 1 if follows_score else 5, "task.way": 5,
                             "model.parameters": 2.0 ** m, "score.useful": score,
                             "score.noise": None if m == 0 else rng.normal(), "accuracy": accuracy})
    return rows


@pytest.mark.parametrize("objective", ["regression", "ranking"])
def test_meta_learner_beats_best_on_average_on_held_out_groups(objective):
    rows = synthetic_table()
    learned = leave_one_group_out(rows, lambda: MetaLearner(objective, max_iter=100)).report(resamples=200)
    average = leave_one_group_out(rows, BestOnAverage).report(resamples=200)
    assert learned["top1_regret"]["mean"] < 1.5 < 4 < average["top1_regret"]["mean"]
    assert learned["kendall_tau"]["mean"] > 0.8 > 0.5 > average["kendall_tau"]["mean"]
    assert ("mse" in learned) == (objective == "regression")


class RecordingLearner:
    """Remembers the groups it trained on and the groups (and keys) it was asked to predict."""

    predicts_accuracy = False
    log: list = []

    def fit(self, rows):
        self.trained = {row["group"] for row in rows}
        return self

    def predict(self, rows):
        RecordingLearner.log.append((self.trained, {row["group"] for row in rows},
                                     any("accuracy" in row for row in rows)))
        return np.zeros(len(rows))


def test_leave_one_group_out_never_trains_on_the_held_out_group():
    rows = synthetic_table(groups=4, tasks=3)
    RecordingLearner.log = []
    held_out = leave_one_group_out(rows, RecordingLearner)
    assert len(RecordingLearner.log) == 4
    for trained, tested, saw_accuracy in RecordingLearner.log:
        assert len(tested) == 1 and not tested & trained and len(trained) == 3
        assert not saw_accuracy
    assert held_out.true.shape == held_out.predicted.shape == (12, 6)
    assert not np.isnan(held_out.predicted).any()


def test_compare_reports_every_baseline():
    rows = synthetic_table(groups=4, tasks=6)
    reports = compare(rows, resamples=200)
    assert set(reports) == {"random", "best-on-average", "biggest model", "score.noise", "score.useful",
                            "meta-learner", "meta-learner (ranking)", "meta-learner without scores", "oracle"}
    assert reports["oracle"]["top1_regret"]["mean"] == 0.0 and reports["oracle"]["mse"]["mean"] == 0.0
    assert all(r["top1_regret"]["mean"] >= 0.0 and r["relative_top1"]["mean"] <= 1.0 for r in reports.values())
    # A missing score ranks its model last, never first.
    scores = single_score("noise").predict(rows[:6])
    assert scores[0] == -np.inf and np.isfinite(scores[1:]).all()
    assert (RandomPick(3).predict(rows[:6]) == RandomPick(3).predict(rows[:6])).all()


def test_feature_selection_and_table_errors():
    rows = synthetic_table(groups=2, tasks=2)
    assert feature_columns(rows, ("task.", "model.")) == ["model.parameters", "task.shot", "task.way"]
    assert feature_columns(rows, ["score.useful"]) == ["score.useful"]
    with pytest.raises(ConfigError, match="no column"):
        feature_columns(rows, ["score.logme"])
    with pytest.raises(ConfigError, match="objective"):
        MetaLearner("listwise")
    bad_tables = [
        (rows + [dict(rows[0])], "twice"),
        ([{**rows[0], "accuracy": None}] + rows[1:], "finite accuracy"),
        ([{**rows[0], "group": "elsewhere"}] + rows[1:], "two groups"),
        ([{**rows[0], "score.useful": "high"}] + rows[1:], "numeric"),
    ]
    for table, fragment in bad_tables:
        with pytest.raises(DataError, match=fragment):
            MetaLearner().fit(table)
    with pytest.raises(DataError, match="every task needs all"):
        leave_one_group_out(rows[1:], Oracle)


def test_a_score_only_one_model_has_does_not_break_either_objective():
    """LEEP exists only for models with a source head: with one such model, every pairwise
    difference is NaN, which the trees would refuse."""
    rng = np.random.default_rng(0)
    rows = []
    for t in range(12):
        for m in range(3):
            acc = 50 + 10 * m + rng.normal()
            rows.append({"task": t, "group": f"g{t % 3}", "model": f"m{m}", "accuracy": acc,
                         "task.shot": 1 + t % 2, "model.width": 16 * (m + 1), "score.logme": acc / 100 + rng.normal(0, .01),
                         "score.leep": -1.0 if m == 0 else None})
    for objective in ("regression", "ranking"):
        learner = MetaLearner(objective=objective, max_iter=20).fit(rows[:27])
        assert np.isfinite(learner.predict(rows[27:])).all()
