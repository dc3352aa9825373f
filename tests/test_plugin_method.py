"""A new method is one class and one registry call: this file adds one, and trains,
evaluates, reports and adds it to a model zoo through the public API alone."""

from __future__ import annotations

import torch

from fewshot.config import TrainConfig
from fewshot.data import load_dataset, make_sampler
from fewshot.data.episodes import Episode
from fewshot.evaluate import evaluate, record_evaluation
from fewshot.methods import METHODS, Method, register
from fewshot.methods.base import Predictor
from fewshot.report import build_report
from fewshot.runs import load_run
from fewshot.select.index import Zoo
from fewshot.store import RunStore
from fewshot.train import Trainer


class NearestNeighbour(Method):
    """Toy: a query takes the label of its nearest support example in feature space,
    scored as the negative distance to each class's nearest example."""

    name = "toy-nearest-neighbour"

    def __init__(self, backbone: torch.nn.Module, temperature: float = 1.0):
        super().__init__(backbone)
        self.temperature = temperature

    def _logits(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, way: int) -> torch.Tensor:
        distances = torch.cdist(query, support)  # (queries, support)
        per_class = torch.full((len(query), way), float("inf"))
        per_class = per_class.scatter_reduce(1, support_y.expand(len(query), -1), distances, "amin")
        return -per_class / self.temperature

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        n = len(episode.support_x)
        features = self.features(torch.cat([episode.support_x, episode.query_x]))
        return self._logits(features[:n], episode.support_y, features[n:], episode.way)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        support = self.features(support_x)
        return lambda query_x: self._logits(support, support_y, self.features(query_x), way)


def test_a_method_defined_here_trains_evaluates_reports_and_joins_a_zoo(tmp_path):
    register(NearestNeighbour)
    try:
        runs = tmp_path / "runs"
        config = TrainConfig(method="toy-nearest-neighbour", method_options={"temperature": 0.5}, backbone="mlp",
                             backbone_options={"hidden": [32]}, dataset="digits", way=5, shot=1, query=3,
                             episodes=20, val_split=None, val_every=10, checkpoint_every=10)
        trained = Trainer(config, tmp_path / "run", runs=runs).run(progress=False)
        assert trained.steps == 20 and trained.run_id is not None

        loaded_config, method, _ = load_run(tmp_path / "run")
        assert isinstance(method, NearestNeighbour) and method.temperature == 0.5
        data = load_dataset("digits")
        sampler = make_sampler("digits", data, "test", 5, 1, 5, seed=0)
        result = evaluate(method, sampler, 20, progress=False)
        assert 20.0 < result.accuracy <= 100.0  # far above chance (20 %) in practice; never NaN
        record_evaluation(result, method=method.name, dataset="digits", split="test", seed=0,
                          run_dir=tmp_path / "run", runs=runs)
        kinds = [r["kind"] for r in RunStore(runs).list(method=method.name)]
        assert kinds == ["train", "evaluate"]

        build_report([tmp_path / "run"], tmp_path / "report", runs=runs)
        assert (tmp_path / "report" / "index.html").read_text().count("toy-nearest-neighbour") >= 1

        zoo = Zoo(tmp_path / "zoo", create=True)
        zoo.add("toy", tmp_path / "run")
        model = zoo.load("toy")
        assert model.metadata["objective"] == "toy-nearest-neighbour"
        with torch.no_grad():
            assert model.backbone(torch.zeros(2, 1, 8, 8)).shape == (2, 32)
    finally:
        METHODS.pop(NearestNeighbour.name, None)
