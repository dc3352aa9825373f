"""The evaluation protocol: confidence intervals, identical suites, no trace left on the model."""

import math

import numpy as np
import pytest
import torch

from fewshot.data import EpisodeSampler
from fewshot.evaluate import evaluate
from fewshot.metrics import confidence_interval
from fewshot.methods import PixelNearestMean, ProtoNet
from fewshot.models import Conv4

from core_fixtures import digits8  # noqa: F401  (fixture)


def test_confidence_interval_is_196_standard_errors():
    values = np.array([90.0, 100.0, 80.0, 95.0])
    mean, half = confidence_interval(values)
    assert mean == pytest.approx(91.25)
    assert half == pytest.approx(1.96 * np.std(values, ddof=1) / 2.0)
    assert math.isnan(confidence_interval(np.array([1.0]))[1])


def test_suite_is_identical_across_methods_and_runs(digits8):
    sampler = EpisodeSampler(digits8, "test", 5, 1, 5, seed=7)
    a = evaluate(PixelNearestMean(), sampler, 30, progress=False)
    b = evaluate(PixelNearestMean(), EpisodeSampler(digits8, "test", 5, 1, 5, seed=7), 30, progress=False)
    assert np.array_equal(a.scores, b.scores)
    assert a.episodes == 30 and "30 episodes, 5-way 1-shot" in a.summary()
    c = evaluate(PixelNearestMean(), EpisodeSampler(digits8, "test", 5, 1, 5, seed=8), 30, progress=False)
    assert not np.array_equal(a.scores, c.scores)


def test_evaluation_leaves_batchnorm_statistics_and_mode_untouched(digits8):
    torch.manual_seed(0)
    method = ProtoNet(Conv4(1, width=8, depth=2))
    method.train()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    evaluate(method, EpisodeSampler(digits8, "test", 5, 1, 5), 5, progress=False)
    assert method.training
    for key, value in method.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_pixel_nearest_mean_is_right_on_a_constructed_task():
    support = torch.tensor([[0.0, 0.0], [10.0, 10.0]]).view(2, 2, 1, 1)
    predictor = PixelNearestMean().adapt(support, torch.tensor([0, 1]), 2)
    query = torch.tensor([[1.0, 1.0], [9.0, 8.0]]).view(2, 2, 1, 1)
    assert predictor(query).argmax(1).tolist() == [0, 1]
