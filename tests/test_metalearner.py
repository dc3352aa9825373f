"""Model selection: the selection metrics on constructed cases, and the meta-learner on held-out groups."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fewshot.errors import ConfigError, DataError
from fewshot.select.baselines import BestOnAverage, BestOnAverageInDomain, Oracle, RandomPick, biggest_model, single_score
from fewshot.select.comparison import compare, held_out, leave_one_group_out, paired_differences
from fewshot.select.metalearner import MetaLearner
from fewshot.select.table import feature_columns, relative_scores
from fewshot.select.metrics import (best_in_top3, kendall_tau, paired_difference, per_task, selection_report,
                                    top1_regret, weighted_tau)


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
    # Tied predictions: the tie-break keys decide, and a constant predictor ranks nothing.
    # (the lowest key wins a tie)
    keys = np.array([0.2, 0.1, 0.5, 0.3, 0.7])
    assert best_in_top3(true, np.array([0.8, 1, 0.9, 0.8, 0.1]), keys) == 1.0  # model 0 wins the tie for 3rd
    assert best_in_top3(true, np.array([0.8, 1, 0.9, 0.8, 0.1]), keys[::-1]) == 0.0  # now model 3 does
    assert top1_regret(true, np.array([0.0, 0.0, 1.0, 1.0, 1.0]), keys) == pytest.approx(0.3)  # model 3
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


def test_ties_are_broken_at_random_with_a_fixed_seed():
    """A score that ties across every model (SFDA saturating at 1) used to pick the first column."""
    rng = np.random.default_rng(0)
    true = rng.uniform(50, 90, size=(400, 5))
    true[:, 0] = 10.0  # the first column is the worst model everywhere
    tied = np.ones_like(true)
    regret = per_task(true, tied, seed=0)["top1_regret"]
    expected = (true.max(1)[:, None] - true).mean(1)  # a uniformly random pick's expected regret
    assert regret.mean() == pytest.approx(expected.mean(), rel=0.1)
    assert (regret < true.max(1) - 10.0).mean() > 0.7  # the first model is picked about 1 time in 5
    assert (regret == per_task(true, tied, seed=0)["top1_regret"]).all()  # seeded
    assert (regret != per_task(true, tied, seed=1)["top1_regret"]).any()


def test_a_score_that_cannot_apply_never_picks_a_model():
    """NaN = cannot score that model there: not a candidate; a task with no candidate is left out."""
    true = np.array([[90.0, 50.0, 70.0], [60.0, 80.0, 70.0], [50.0, 60.0, 70.0]])
    predicted = np.array([[np.nan, 0.2, 0.1], [np.nan, np.nan, np.nan], [0.5, np.nan, 0.4]])
    metrics = per_task(true, predicted)
    assert metrics["top1_regret"][0] == pytest.approx(40.0)  # model 1 (scored best), not model 0
    assert np.isnan(metrics["top1_regret"][1]) and np.isnan(metrics["kendall_tau"][1])
    assert metrics["top1_regret"][2] == pytest.approx(20.0)
    report = selection_report(true, predicted, accuracy_predictions=False, resamples=100)
    assert report["top1_regret"]["mean"] == pytest.approx(30.0)
    assert report["applies"]["mean"] == pytest.approx(2 / 3)
    rows = synthetic_table(groups=2, tasks=1)
    assert np.isnan(single_score("noise").predict(rows[:6])[0])  # model 0 has no noise score


def test_paired_difference_resolves_what_marginal_intervals_cannot():
    rng = np.random.default_rng(0)
    hard = rng.uniform(0, 30, size=300)  # tasks differ a lot
    a, b = hard, hard + 1.0 + rng.normal(0, 0.5, size=300)  # b is always about a point worse
    diff = paired_difference(a, b, resamples=500)
    assert diff["high"] < 0 and diff["mean"] == pytest.approx(-1.0, abs=0.1) and diff["tasks"] == 300
    ma, mb = (selection_report(np.c_[x, np.zeros_like(x)], np.c_[np.zeros_like(x), np.ones_like(x)],
                               accuracy_predictions=False, resamples=500)["top1_regret"] for x in (a, b))
    assert ma["high"] > mb["low"]  # the marginal intervals overlap
    assert paired_difference(np.array([1.0, np.nan]), np.array([np.nan, 2.0]))["tasks"] == 0


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
    if objective == "ranking":  # the ranking learner also predicts accuracies, to show beside its ranking
        learner = MetaLearner("ranking", max_iter=50).fit(rows[36:])
        accuracy = learner.predict_accuracy(rows[:36])
        truth = np.array([r["accuracy"] for r in rows[:36]])
        assert np.sqrt(((accuracy - truth) ** 2).mean()) < 8


def test_relative_scores_are_per_task_and_scale_free():
    x = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, np.nan], [100.0, 5.0], [300.0, 5.0]])
    out, names = relative_scores(x, ["task.way", "score.s"], np.array([0, 0, 0, 1, 1]))
    assert names == ["task.way", "score.s", "z.score.s", "rank.score.s"]
    assert out[:3, 2].tolist()[:2] == [-1.0, 1.0] and np.isnan(out[2, 2]) and np.isnan(out[2, 3])
    assert out[3:, 2].tolist() == [0.0, 0.0] and out[3:, 3].tolist() == [0.5, 0.5]  # ties: equal ranks


def test_the_new_baselines():
    rows = []
    for t in range(4):
        domain = "digits" if t % 2 else "omniglot"
        for m, source in enumerate(["digits", "omniglot", "digits"]):
            rows.append({"task": f"t{t}", "group": f"g{t}", "model": f"m{m}", "accuracy": 50 + 10 * m,
                         "task.domain.digits": float(domain == "digits"),
                         "task.domain.omniglot": float(domain == "omniglot"),
                         "model.source.digits": float(source == "digits"),
                         "model.source.omniglot": float(source == "omniglot"),
                         "model.parameters": [10, 1000, 100][m]})
    predicted = BestOnAverageInDomain().fit(rows).predict(rows)
    for row, p in zip(rows, predicted):  # only models of the task's domain are candidates
        assert np.isnan(p) == (row["task.domain.digits"] != row["model.source.digits"])
    picks = per_task(*_matrix(rows, predicted))["top1_regret"]
    assert picks.tolist() == [10.0, 0.0, 10.0, 0.0]  # omniglot tasks: m1 (60 vs 70 best); digits: m2
    assert biggest_model().predict(rows[:3]).argmax() == 1


def _matrix(rows, predicted):
    tasks = sorted({r["task"] for r in rows})
    models = sorted({r["model"] for r in rows})
    true, pred = np.zeros((len(tasks), len(models))), np.zeros((len(tasks), len(models)))
    for r, p in zip(rows, predicted):
        true[tasks.index(r["task"]), models.index(r["model"])] = r["accuracy"]
        pred[tasks.index(r["task"]), models.index(r["model"])] = p
    return true, pred


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
                            "meta-learner (ranking)", "meta-learner (regression)", "meta-learner without scores",
                            "oracle"}
    assert reports["oracle"]["top1_regret"]["mean"] == 0.0 and reports["oracle"]["mse"]["mean"] == 0.0
    assert all(r["top1_regret"]["mean"] >= 0.0 and r["relative_top1"]["mean"] <= 1.0 for r in reports.values())
    assert (RandomPick(3).predict(rows[:6]) == RandomPick(3).predict(rows[:6])).all()
    held = held_out(rows, {"useful": lambda: single_score("useful"), "average": BestOnAverage})
    diff = paired_differences(held, "useful", resamples=200)
    assert set(diff) == {"average"} and diff["average"]["top1_regret"]["tasks"] == 24


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
