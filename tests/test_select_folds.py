"""Evidence with the right unit: related groups never split, the nested choice sees training
groups only, and intervals that resample whole groups."""

from __future__ import annotations

import numpy as np
import pytest

from fewshot.errors import ConfigError, DataError
from fewshot.select.comparison import held_out, leave_one_group_out, paired_differences
from fewshot.select.folds import RELATED_GROUPS, group_folds, relation
from fewshot.select.metrics import bootstrap_ci, paired_difference
from fewshot.select.nested import NestedChoice
from fewshot.select.tasks import GROUPS

GROUP_NAMES = ["A", "A-rot", "B", "C", "D"]
RELATED = {"A-rot": ["A"]}
MODELS = ["m0", "m1", "m2", "m3"]


def make_rows(tasks_per_group=4, flipped=("D",), seed=0):
    """Tasks whose true accuracy follows ``score.x`` up, except in ``flipped`` groups where it follows it down."""
    rng = np.random.default_rng(seed)
    rows = []
    for group in GROUP_NAMES:
        for t in range(tasks_per_group):
            x = rng.permutation(len(MODELS)).astype(float)
            accuracy = 50 + 10 * (-x if group in flipped else x)
            for model, xi, acc in zip(MODELS, x, accuracy):
                rows.append({"task": f"{group}/{t}", "group": group, "model": model, "score.x": xi, "accuracy": acc})
    return rows


class Recorder:
    """Follows ``score.x`` times ``sign``; records every group it was fitted on, in ``log``."""

    predicts_accuracy = False

    def __init__(self, log, sign=1.0, name="up"):
        self.log, self.sign, self.name = log, sign, name

    def fit(self, rows):
        self.log.append((self.name, frozenset(r["group"] for r in rows)))
        return self

    def predict(self, rows):
        return np.array([self.sign * r["score.x"] for r in rows])


def test_relation_is_symmetric_not_transitive():
    closure = relation({"x-rot": ["x"], "x-blur": ["x"]})
    assert closure["x"] == {"x-rot", "x-blur"} and closure["x-rot"] == {"x"} and "x-blur" not in closure["x-rot"]
    # The declared table names real groups of the meta-dataset.
    known = {g for groups in GROUPS.values() for g in groups}
    assert {g for k, v in RELATED_GROUPS.items() for g in (k, *v)} <= known


def test_related_groups_never_split():
    groups = [r["group"] for r in make_rows()]
    for train, test, group in group_folds(groups, RELATED):
        trained = {groups[i] for i in train}
        assert {groups[i] for i in test} == {group}
        assert group not in trained
        assert not trained & relation(RELATED).get(group, set())
    log = []
    held = leave_one_group_out(make_rows(), lambda: Recorder(log), RELATED)
    fitted = dict(zip(sorted(GROUP_NAMES), (seen for _, seen in log)))
    assert fitted["A"] == {"B", "C", "D"} and fitted["A-rot"] == {"B", "C", "D"}
    assert fitted["B"] == {"A", "A-rot", "C", "D"}
    assert not np.isnan(held.predicted).any()
    # Without the relation, A's rotated copy would be in A's training set.
    log.clear()
    leave_one_group_out(make_rows(), lambda: Recorder(log))
    assert "A-rot" in dict(zip(sorted(GROUP_NAMES), (s for _, s in log)))["A"]


def test_a_group_related_to_every_other_cannot_be_held_out():
    with pytest.raises(ConfigError, match="nothing is left to train on"):
        group_folds(["a", "b", "b"], {"a": ["b"]})
    assert [g for _, _, g in group_folds(["a", "b", "c"], {"a": ["b", "c"]}, strict=False)] == ["b", "c"]


def test_nested_choice_uses_training_groups_only():
    log = []
    candidates = {"up": lambda: Recorder(log, 1.0, "up"), "down": lambda: Recorder(log, -1.0, "down")}
    held = leave_one_group_out(make_rows(), lambda: NestedChoice(candidates, RELATED), RELATED)
    # Every fit, inner or refit, of every candidate: never the outer test group nor its relatives.
    outer = {frozenset(set(GROUP_NAMES) - {g} - relation(RELATED).get(g, set())) for g in GROUP_NAMES}
    for _, seen in log:
        assert any(seen <= train for train in outer)
    # The planted case: "up" is right on every group but D, so the choice made without D is
    # "up", and on D it picks the worst model (regret 30 points) though "down" would be perfect.
    d = held.groups.index("D")
    tasks_d = [i for i, g in enumerate(held.groups) if g == "D"]
    regret = held.true[tasks_d].max(1) - held.true[tasks_d, held.predicted[tasks_d].argmax(1)]
    assert d in tasks_d and np.allclose(regret, 30.0)
    others = [i for i, g in enumerate(held.groups) if g != "D"]
    assert np.allclose(held.true[others].max(1), held.true[others, held.predicted[others].argmax(1)])


def test_nested_choice_records_its_inner_validation():
    rows = [r for r in make_rows() if r["group"] != "D"]
    log = []
    choice = NestedChoice({"down": lambda: Recorder(log, -1.0, "down"), "up": lambda: Recorder(log, 1.0, "up")},
                          RELATED).fit(rows)
    assert choice.chosen_ == "up" and choice.inner_regret_["up"] == 0.0 and choice.inner_regret_["down"] == 30.0
    assert choice.groups_seen_ == ["A", "A-rot", "B", "C"] and choice.inner_related_
    # Training groups that are all related: inner folds fall back to single groups, and say so.
    pair = NestedChoice({"up": lambda: Recorder([], 1.0)}, RELATED).fit([r for r in rows if r["group"] in ("A", "A-rot")])
    assert pair.inner_related_ is False and pair.chosen_ == "up"
    with pytest.raises(ConfigError, match="fit the nested choice"):
        NestedChoice({"up": lambda: Recorder([])}).predict(rows)


def test_group_bootstrap():
    values = np.r_[np.zeros(50), np.ones(50)]
    by_task = bootstrap_ci(values, resamples=500)
    by_group = bootstrap_ci(values, resamples=500, clusters=["a"] * 50 + ["b"] * 50)
    assert by_task["mean"] == by_group["mean"] == 0.5
    assert 0.35 < by_task["low"] < 0.5 < by_task["high"] < 0.65
    assert by_group["low"] == 0.0 and by_group["high"] == 1.0  # two groups: all of one, half-half, all of the other
    # One task per cluster, labels in task order: exactly the task bootstrap.
    singletons = [f"{i:03d}" for i in range(100)]
    noisy = np.random.default_rng(0).normal(size=100)
    assert bootstrap_ci(noisy, clusters=singletons) == bootstrap_ci(noisy)
    with pytest.raises(DataError, match="one label per value"):
        bootstrap_ci(values, clusters=["a"])
    # Paired differences keep each pair's group when some tasks are undefined.
    a = np.r_[np.full(50, np.nan), np.ones(50)]
    assert paired_difference(a, np.zeros(100), clusters=["a"] * 50 + ["b"] * 50)["tasks"] == 50


def test_reports_by_group():
    rows = make_rows()
    held = held_out(rows, {"up": lambda: Recorder([], 1.0), "down": lambda: Recorder([], -1.0, "down")},
                    related=RELATED)
    by_group, by_task = held["up"].report("group", resamples=300), held["up"].report("task", resamples=300)
    assert by_group["top1_regret"]["mean"] == by_task["top1_regret"]["mean"]
    assert by_group["top1_regret"]["high"] >= by_task["top1_regret"]["high"]
    paired = paired_differences(held, "up", unit="group", resamples=300)
    assert paired["down"]["top1_regret"]["mean"] < 0
    with pytest.raises(ConfigError, match="resampling unit"):
        held["up"].report("alphabet")
