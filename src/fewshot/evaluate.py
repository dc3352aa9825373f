"""The one evaluation protocol: a fixed suite of seeded episodes, accuracy ± 95% CI.

A suite is defined by (dataset, split, way, shot, query, seed, count), so two methods
evaluated with the same arguments see identical tasks, and their per-episode
accuracies can be compared pairwise.

Test-time BatchNorm is explicit: each method's ``test_mode`` decides it. ``"eval"``
(metric-based methods) normalises with the running statistics of meta-training;
``"train"`` (MAML and its family) normalises each batch with its own statistics, the
transductive setting those papers report. Either way no running statistic is updated
during evaluation: the model is restored exactly as it was.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.episodes import EpisodeSampler
from .errors import ConfigError
from .methods.base import Method


def confidence_interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval, 1.96 · s / √n (s with n-1 dof)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()) if len(values) else math.nan, math.nan
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


@dataclass
class EvalResult:
    """Per-episode accuracies (in %) of one method on one suite."""

    accuracies: np.ndarray = field(repr=False)
    way: int
    shot: int
    query: int
    seconds: float = 0.0

    @property
    def episodes(self) -> int:
        return len(self.accuracies)

    @property
    def accuracy(self) -> float:
        return confidence_interval(self.accuracies)[0]

    @property
    def ci95(self) -> float:
        return confidence_interval(self.accuracies)[1]

    def summary(self) -> str:
        return (f"accuracy {self.accuracy:.1f} ± {self.ci95:.1f} % "
                f"({self.episodes} episodes, {self.way}-way {self.shot}-shot)")

    def to_dict(self, per_episode: bool = False) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "accuracies"}
        out.update(accuracy=self.accuracy, ci95=self.ci95, episodes=self.episodes)
        if per_episode:
            out["per_episode"] = [round(float(a), 4) for a in self.accuracies]
        return out


def evaluate(method: Method, sampler: EpisodeSampler, episodes: int = 600, *, progress: bool = True,
             desc: str = "evaluating") -> EvalResult:
    """Accuracy of ``method`` on episodes ``0 .. episodes-1`` of ``sampler``.

    The query set is predicted without gradients; methods whose ``adapt`` needs
    gradients (fine-tuning, MAML) enable them inside ``adapt`` themselves.
    """
    if episodes < 1:
        raise ConfigError(f"evaluation needs at least one episode, got {episodes}")
    # Evaluation must not leave a trace: BatchNorm in train mode would update its
    # running statistics, so a "train"-mode method is evaluated on a copy.
    model = copy.deepcopy(method) if method.test_mode == "train" else method
    was_training = method.training
    model.train(method.test_mode == "train")
    accuracies = np.empty(episodes, dtype=np.float64)
    start = time.perf_counter()
    try:
        with tqdm(total=episodes, desc=desc, unit="ep", disable=not progress, leave=False) as bar:
            for i, ep in enumerate(sampler.suite(episodes)):
                with torch.no_grad():
                    predictor = model.adapt(ep.support_x, ep.support_y, ep.way)
                    logits = predictor(ep.query_x)
                accuracies[i] = float((logits.argmax(-1) == ep.query_y).float().mean()) * 100.0
                bar.update()
                if i % 20 == 19:
                    bar.set_postfix(acc=f"{accuracies[: i + 1].mean():.1f}")
    finally:
        method.train(was_training)
    return EvalResult(accuracies, sampler.way, sampler.shot, sampler.query, time.perf_counter() - start)
