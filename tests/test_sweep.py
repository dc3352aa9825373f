"""The sweep ground truth: chosen on validation inside the support set only, the collapse check,
and a real sweep on a tiny model."""

from __future__ import annotations

import pytest
import torch

from fewshot.errors import ConfigError
from fewshot.models.pretrained import Pretrained
from fewshot.select.sweep import PROBE, SWEEP, Setting, collapse_report, collapsed, model_adapter, sweep

A, B = Setting("finetune", 0.01, 25), Setting("finetune", 0.1, 100)


def task(way=2, shot=4, query=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    sx, qx = torch.randn(way * shot, 1, 8, 8, generator=g), torch.randn(way * query, 1, 8, 8, generator=g)
    return sx, torch.arange(way).repeat_interleave(shot), qx, torch.arange(way).repeat_interleave(query)


class Planted:
    """Accuracies fixed per setting, one table for validation and another for the queries."""

    def __init__(self, query_x, support_x, validation, query):
        self.query_x, self.support_x, self.validation, self.query = query_x, support_x, validation, query
        self.on_query = []

    def __call__(self, setting, tx, ty, ex, ey):
        if ex is self.query_x:
            self.on_query.append(setting.name)
            return self.query[setting.name], 0.5
        # Validation examples are support examples, never queries.
        assert all(any(torch.equal(e, s) for s in self.support_x) for e in ex)
        assert not any(torch.equal(e, q) for e in ex for q in self.query_x)
        return self.validation[setting.name], 0.25


def test_the_sweep_picks_on_validation_only():
    sx, sy, qx, qy = task()
    # A is best on validation, B on the queries: the sweep must report A's query accuracy.
    planted = Planted(qx, sx, {"linear-probe": 60.0, A.name: 90.0, B.name: 70.0},
                      {"linear-probe": 65.0, A.name: 75.0, B.name: 95.0})
    result = sweep(planted, sx, sy, qx, qy, way=2, settings=[PROBE, A, B])
    assert result["setting"] == A.name and result["accuracy"] == 75.0
    assert result["validation"] == {"linear-probe": 60.0, A.name: 90.0, B.name: 70.0}
    assert sorted(planted.on_query) == sorted([A.name, "linear-probe"])  # B never saw the queries
    assert result["probe_accuracy"] == 65.0 and not result["collapsed"]
    assert result["cpu_seconds"] == pytest.approx(3 * 2 * 0.25 + 2 * 0.5)  # 2 folds × 3 settings, then 2 runs


def test_ties_go_to_the_first_setting_and_bad_sweeps_fail():
    sx, sy, qx, qy = task()
    planted = Planted(qx, sx, {"linear-probe": 80.0, A.name: 80.0}, {"linear-probe": 70.0, A.name: 90.0})
    assert sweep(planted, sx, sy, qx, qy, 2, [PROBE, A])["setting"] == "linear-probe"
    assert sweep(planted, sx, sy, qx, qy, 2, [A, PROBE])["setting"] == A.name
    with pytest.raises(ConfigError, match="twice"):
        sweep(planted, sx, sy, qx, qy, 2, [A, A])
    with pytest.raises(ConfigError, match="needs lr and steps"):
        Setting("lp-ft")
    with pytest.raises(ConfigError, match="unknown adaptation"):
        Setting("surgery", 0.1, 5)
    assert len({s.name for s in SWEEP}) == len(SWEEP) == 6 and SWEEP[0] == PROBE


def test_collapse_check():
    assert collapsed(20.0, 60.0, way=5)            # exactly chance while the probe reaches 60 %
    assert not collapsed(20.0, 25.0, way=5)        # the probe is near chance too: the features fail
    assert not collapsed(40.0, 60.0, way=5)        # above chance: a weak run, not a collapse
    sx, sy, qx, qy = task()
    planted = Planted(qx, sx, {"linear-probe": 60.0, A.name: 90.0}, {"linear-probe": 85.0, A.name: 50.0})
    record = sweep(planted, sx, sy, qx, qy, 2, [PROBE, A])
    assert record["collapsed"] and record["chance"] == 50.0
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
