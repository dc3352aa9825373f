"""The sweep ground truth: chosen on validation inside the support set only, a setting that
fails to fit its support set passed over, the collapse check, and a real sweep on a tiny model."""

from __future__ import annotations

import pytest
import torch

from fewshot.errors import ConfigError
from fewshot.models.pretrained import Pretrained
from fewshot.select.sweep import (PROBE, SWEEP, Setting, collapse_report, collapsed, failed_to_fit, model_adapter,
                                  sweep)

A, B = Setting("finetune", 0.01, 25), Setting("finetune", 0.1, 100)


def task(way=2, shot=4, query=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    sx, qx = torch.randn(way * shot, 1, 8, 8, generator=g), torch.randn(way * query, 1, 8, 8, generator=g)
    return sx, torch.arange(way).repeat_interleave(shot), qx, torch.arange(way).repeat_interleave(query)


def predictions(labels: torch.Tensor, accuracy: float, way: int) -> torch.Tensor:
    """Labels with the first ``accuracy`` % right and the rest one class off."""
    right = round(len(labels) * accuracy / 100)
    assert right == len(labels) * accuracy / 100, "a planted accuracy these examples can reach"
    return torch.cat([labels[:right], (labels[right:] + 1) % way])


class Planted:
    """An adapter with accuracies fixed per setting: one table for validation, one for the
    queries, and one for the support set the final model trained on (100 % unless given)."""

    def __init__(self, task, validation, query, fit=None, way=2):
        self.sx, self.sy, self.qx, self.qy = task
        self.validation, self.query, self.fit, self.way = validation, query, fit or {}, way
        self.on_query = []

    def labels_of(self, x):
        """The support labels of validation examples; queries are never among them."""
        assert not any(torch.equal(e, q) for e in x for q in self.qx)
        return torch.stack([next(y for s, y in zip(self.sx, self.sy) if torch.equal(e, s)) for e in x])

    def __call__(self, setting, tx, ty, ex):
        if not torch.equal(ex[: len(self.qx)], self.qx):
            return predictions(self.labels_of(ex), self.validation[setting.name], self.way), 0.25
        self.on_query.append(setting.name)
        query = predictions(self.qy, self.query[setting.name], self.way)
        if len(ex) == len(self.qx):
            return query, 0.5
        assert torch.equal(ex[len(self.qx):], self.sx)  # the queries, then the support set the model trained on
        return torch.cat([query, predictions(self.sy, self.fit.get(setting.name, 100.0), self.way)]), 0.5


def test_the_sweep_picks_on_validation_only():
    data = task()  # 2-way 4-shot: 2 folds of 4 held-out examples; 10 queries
    # A is best on validation, B on the queries: the sweep must report A's query accuracy.
    planted = Planted(data, {"linear-probe": 50.0, A.name: 100.0, B.name: 75.0},
                      {"linear-probe": 60.0, A.name: 70.0, B.name: 90.0})
    result = sweep(planted, *data, way=2, settings=[PROBE, A, B])
    assert result["setting"] == A.name and result["accuracy"] == 70.0
    assert result["validation"] == {"linear-probe": 50.0, A.name: 100.0, B.name: 75.0}
    assert sorted(planted.on_query) == sorted([A.name, "linear-probe"])  # B never saw the queries
    assert result["probe_accuracy"] == 60.0 and not result["collapsed"] and result["failed_to_fit"] == []
    assert result["support_accuracy"] == 100.0
    assert result["cpu_seconds"] == pytest.approx(3 * 2 * 0.25 + 2 * 0.5)  # 2 folds × 3 settings, then 2 runs


def test_a_setting_that_fails_to_fit_its_support_set_is_passed_over():
    data = task()
    # A wins validation (a lucky 2 of 4, say) but its final model predicts one class: it fits
    # its own support set at chance. The sweep takes B, the next by validation, which fits.
    planted = Planted(data, {"linear-probe": 25.0, A.name: 75.0, B.name: 50.0},
                      {"linear-probe": 80.0, A.name: 50.0, B.name: 90.0}, fit={A.name: 50.0})
    result = sweep(planted, *data, 2, [PROBE, A, B])
    assert result["setting"] == B.name and result["accuracy"] == 90.0 and result["failed_to_fit"] == [A.name]
    assert not result["collapsed"] and result["probe_accuracy"] == 80.0
    # None fits: the one that fits its support set best is kept (B, though last on validation),
    # and on ties the first by validation.
    planted = Planted(data, {"linear-probe": 50.0, A.name: 75.0, B.name: 25.0},
                      {"linear-probe": 80.0, A.name: 50.0, B.name: 60.0},
                      fit={A.name: 25.0, "linear-probe": 25.0, B.name: 37.5}, way=4)
    result = sweep(planted, *data, 2, [PROBE, A, B])
    assert result["setting"] == B.name and result["failed_to_fit"] == [A.name, "linear-probe"]
    assert result["accuracy"] == 60.0 and result["support_accuracy"] == 37.5
    assert planted.on_query.count("linear-probe") == 1  # adapted once: its query accuracy is reused
    assert result["probe_accuracy"] == 80.0
    planted.fit[B.name] = 25.0
    assert sweep(planted, *data, 2, [PROBE, A, B])["setting"] == A.name
    assert failed_to_fit(50.0, way=2) and failed_to_fit(40.0, way=5) and not failed_to_fit(60.0, way=5)
    assert failed_to_fit(6.0, way=20) and not failed_to_fit(100.0, way=2)


def test_ties_go_to_the_first_setting_and_bad_sweeps_fail():
    data = task()
    planted = Planted(data, {"linear-probe": 75.0, A.name: 75.0}, {"linear-probe": 70.0, A.name: 90.0})
    assert sweep(planted, *data, 2, [PROBE, A])["setting"] == "linear-probe"
    assert sweep(planted, *data, 2, [A, PROBE])["setting"] == A.name
    with pytest.raises(ConfigError, match="twice"):
        sweep(planted, *data, 2, [A, A])
    with pytest.raises(ConfigError, match="needs lr and steps"):
        Setting("lp-ft")
    with pytest.raises(ConfigError, match="unknown adaptation"):
        Setting("surgery", 0.1, 5)
    assert len({s.name for s in SWEEP}) == len(SWEEP) == 6 and SWEEP[0] == PROBE


def test_collapse_check():
    assert collapsed(20.0, 60.0, way=5)            # exactly chance while the probe reaches 60 %
    assert not collapsed(20.0, 25.0, way=5)        # the probe is near chance too: the features fail
    assert not collapsed(40.0, 60.0, way=5)        # above chance: a weak run, not a collapse
    data = task()
    # A fits its support set but predicts one class on the queries: not detectable without
    # the queries, so it stays chosen and is counted as a collapse.
    planted = Planted(data, {"linear-probe": 75.0, A.name: 100.0}, {"linear-probe": 80.0, A.name: 50.0})
    record = sweep(planted, *data, 2, [PROBE, A])
    assert record["collapsed"] and record["chance"] == 50.0 and record["failed_to_fit"] == []
    report = collapse_report([{**record, "task": "t", "model": "m"}, {"collapsed": False}])
    assert report["runs"] == 2 and report["collapsed"] == 1 and report["examples"][0]["setting"] == A.name


def test_a_real_sweep_on_a_tiny_model():
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU())
    model = Pretrained(backbone, None, {"image_shape": [1, 8, 8], "feature_dim": 16, "bn": "eval"})
    sx, sy, qx, qy = task(way=2, shot=3, query=4)
    sx[sy == 1] += 1.5  # a learnable task
    qx[qy == 1] += 1.5
    settings = [PROBE, Setting("finetune", 0.1, 5), Setting("lp-ft", 0.01, 5)]
    before = [p.clone() for p in backbone.parameters()]
    result = sweep(model_adapter(model, 2), sx, sy, qx, qy, 2, settings)
    assert set(result["validation"]) == {s.name for s in settings}
    assert result["validation"][result["setting"]] == max(result["validation"].values())
    assert 0 <= result["accuracy"] <= 100 and result["probe_accuracy"] > 50 and result["cpu_seconds"] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, backbone.parameters()))  # adapting leaves the model
