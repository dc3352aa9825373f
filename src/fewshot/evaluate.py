"""The one evaluation protocol: a fixed suite of seeded episodes, accuracy ± 95% CI.

A suite is defined by (dataset, split, way, shot, query, seed, count), so two methods
evaluated with the same arguments see identical tasks, and their per-episode
accuracies can be compared pairwise. Regression suites (sinusoids, Finn et al. 2017,
section 5.1) are scored the same way by the query mean squared error of each episode:
the sampler's task kind (:mod:`fewshot.taskkind`) decides the metric, and the method
must do the same task.

Test-time BatchNorm is explicit: each method's ``test_mode`` decides it. ``"eval"``
(metric-based methods) normalises with the running statistics of meta-training;
``"train"`` (MAML and its family) normalises each batch with its own statistics, the
transductive setting those papers report. Either way no running statistic is updated
during evaluation: the model is restored exactly as it was.

**Devices.** ``device=`` evaluates on that device (default: where the method's
weights are); a method elsewhere is evaluated on a moved copy, never moved itself.
Episodes are gathered on the device (:meth:`EpisodeSampler.on`), the same episodes on
every device. ``precision="bf16"``/``"fp16"`` runs adaptation and prediction under
autocast (:mod:`fewshot.devices`); scores are computed in float32. Gradient-based
adaptation (fine-tuning, MAML's inner loop) gets no loss scaling at test time, so
prefer bf16 to fp16 for those.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from .progress import bar as progress_bar

from . import devices
from .config import DEFAULT_PRECISION
from .data.tasks import Sampler
from .errors import ConfigError, TrainingError
from .methods.base import Method
from .metrics import confidence_interval
from .params import MAX_EPISODES
from .store import record_run
from .taskkind import TaskKind, kind_of_metric, task_kind


@dataclass
class EvalResult:
    """Per-episode ``scores`` of one method on one suite: accuracies in % (``metric``
    ``"accuracy"``), or query mean squared errors (``"mse"``, regression)."""

    scores: np.ndarray = field(repr=False)
    way: int
    shot: int
    query: int
    seconds: float = 0.0
    metric: str = "accuracy"
    #: Reinforcement suites: each task's mean return after 0, 1, ..., K adaptation steps,
    #: ``(episodes, K+1)``; ``scores`` holds the last column.
    per_step: np.ndarray | None = field(default=None, repr=False)
    device: str = "cpu"
    precision: str = DEFAULT_PRECISION
    #: Peak memory of the evaluation in MB (see :func:`fewshot.devices.peak_memory` for what is measured).
    peak_memory_mb: float | None = None

    @property
    def episodes(self) -> int:
        return len(self.scores)

    @property
    def kind(self) -> TaskKind:
        """The task kind the suite's metric scores."""
        return kind_of_metric(self.metric)

    @property
    def value(self) -> float:
        """The mean score, in the suite's metric."""
        return confidence_interval(self.scores)[0]

    @property
    def accuracy(self) -> float:
        """Mean accuracy in %; NaN for a regression suite."""
        return self.value if self.metric == "accuracy" else math.nan

    @property
    def mse(self) -> float:
        """Mean query MSE; NaN for a classification suite."""
        return self.value if self.metric == "mse" else math.nan

    @property
    def ci95(self) -> float:
        return confidence_interval(self.scores)[1]

    def better_than(self, other: float | None) -> bool:
        """Whether this result beats a mean score ``other`` of the same metric (None: nothing to beat)."""
        return self.kind.better(self.value, other)

    def by_step(self) -> list[tuple[float, float]]:
        """Mean return ± 95% CI after 0, 1, ..., K adaptation steps (reinforcement suites)."""
        return [] if self.per_step is None else [confidence_interval(c) for c in self.per_step.T]

    def summary(self) -> str:
        if self.metric == "return":
            steps = "; ".join(f"{k}: {m:.4g} ± {c:.2g}" for k, (m, c) in enumerate(self.by_step()))
            return (f"return {self.value:.4g} ± {self.ci95:.2g} after {len(self.by_step()) - 1} adaptation step(s) "
                    f"({self.episodes} tasks, {self.shot} rollouts per step); by step {steps}")
        if self.metric == "mse":
            return (f"mse {self.value:.4g} ± {self.ci95:.2g} "
                    f"({self.episodes} episodes, {self.shot}-shot regression, {self.query} query points)")
        return (f"accuracy {self.accuracy:.1f} ± {self.ci95:.1f} % "
                f"({self.episodes} episodes, {self.way}-way {self.shot}-shot)")

    def to_dict(self, per_episode: bool = False) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("scores", "per_step")}
        out.update({self.metric: self.value}, ci95=self.ci95, episodes=self.episodes)
        if self.per_step is not None:
            out["by_step"] = [{"steps": k, "return": m, "ci95": c} for k, (m, c) in enumerate(self.by_step())]
            if per_episode:
                out["per_episode_by_step"] = [[round(float(v), 6) for v in row] for row in self.per_step]
        if per_episode:
            # Accuracies are multiples of 100/queries; errors need more digits.
            digits = 4 if self.metric == "accuracy" else 8
            out["per_episode"] = [round(float(a), digits) for a in self.scores]
        return out


def evaluate(method: Method, sampler: Sampler, episodes: int = 600, *, progress: bool = True,
             desc: str = "evaluating", device: str | torch.device | None = None,
             precision: str = DEFAULT_PRECISION) -> EvalResult:
    """Accuracy (or, on a regression suite, query MSE) of ``method`` on episodes
    ``0 .. episodes-1`` of ``sampler``, on ``device`` (default: the method's) in ``precision``.

    The query set is predicted without gradients; methods whose ``adapt`` needs
    gradients (fine-tuning, MAML) enable them inside ``adapt`` themselves.
    """
    if episodes < 1:
        raise ConfigError(f"evaluation needs at least one episode, got {episodes}")
    if episodes > MAX_EPISODES:  # checked before the scores array (and the suite) is allocated
        raise ConfigError(f"evaluation runs at most {MAX_EPISODES:,} episodes, got {episodes:,}")
    kind = task_kind(sampler)
    if task_kind(method) is not kind:
        raise ConfigError(f"{method.name} was built for {method.task}, but these episodes are {kind.name} tasks")
    metric = kind.metric
    if kind.rollouts:
        kind.check_device(device, getattr(getattr(sampler, "family", None), "name", kind.name))  # rollouts: on the host
        return _evaluate_returns(method, sampler, episodes, progress, desc)
    label, fmt = ("acc", ".1f") if metric == "accuracy" else (metric, ".3g")
    here = devices.module_device(method)
    device = here if device is None else devices.resolve(device)
    devices.check_precision(precision, device)
    sampler = sampler.on(device)
    # Evaluation must not leave a trace: BatchNorm in train mode would update its
    # running statistics, so a "train"-mode method is evaluated on a copy; so is a
    # method whose weights live on another device.
    model = copy.deepcopy(method) if method.test_mode == "train" or here != device else method
    model.to(device)
    was_training = method.training
    devices.reset_peak_memory(device)
    model.train(method.test_mode == "train")
    scores = np.empty(episodes, dtype=np.float64)
    start = time.perf_counter()
    try:
        with progress_bar(episodes, desc=desc, unit="episode", enabled=progress, leave=False) as bar:
            for i, ep in enumerate(sampler.suite(episodes)):
                with torch.no_grad(), devices.autocast(device, precision):
                    predictor = model.adapt(ep.support_x, ep.support_y, ep.way)
                    outputs = predictor(ep.query_x)
                if torch.is_tensor(outputs) and not torch.isfinite(outputs).all():
                    # Scored, NaN logits pass for chance accuracy: they are an error, never a score.
                    raise TrainingError(f"{method.name} gave non-finite outputs (NaN or infinite) on episode {i}; its "
                                        "weights or test-time options (e.g. a huge inner_lr) are unusable: change "
                                        "them, or train again")
                scores[i] = kind.score(outputs.float(), ep.query_y)
                bar.update()
                if i % 20 == 19:
                    bar.set_postfix({label: format(scores[: i + 1].mean(), fmt)})
    finally:
        method.train(was_training)
    peak, _ = devices.peak_memory(device)
    return EvalResult(scores, sampler.way, sampler.shot, sampler.query, time.perf_counter() - start, metric,
                      device=str(device), precision=precision,
                      peak_memory_mb=None if peak is None else round(peak / 2**20, 1))


def _evaluate_returns(method: Method, sampler: Sampler, episodes: int, progress: bool, desc: str) -> EvalResult:
    """Reinforcement suites (:mod:`fewshot.rl`): each task's return after 0..K
    adaptation steps (``method.adapt_returns``); the score is the return after K."""
    was_training = method.training
    per_step = []
    start = time.perf_counter()
    try:
        with progress_bar(episodes, desc=desc, unit="task", enabled=progress, leave=False) as bar:
            for i, task in enumerate(sampler.suite(episodes)):
                per_step.append(method.adapt_returns(task))
                bar.update()
                if i % 20 == 19:
                    bar.set_postfix({"return": format(np.mean([r[-1] for r in per_step]), ".3g")})
    finally:
        method.train(was_training)
    table = np.asarray(per_step, dtype=np.float64)
    return EvalResult(table[:, -1].copy(), sampler.way, sampler.shot, sampler.query, time.perf_counter() - start,
                      "return", per_step=table)


def record_evaluation(result: EvalResult, *, method: str, dataset: str, split: str | None, seed: int,
                      run_dir: str | Path | None = None, config: dict[str, Any] | None = None,
                      cpu_seconds: float | None = None, runs: str | Path | None = None) -> int:
    """Record an evaluation in the run store, with its per-episode scores (so any two
    methods on the same suite can later be compared pairwise); returns the record id.

    ``config`` holds what defines the suite beyond ``dataset``/``split``/``seed``
    (dataset options, way, shot, query, episodes). A store failure is a
    :class:`~fewshot.errors.StoreError`; ``result`` is untouched by it.
    """
    suite = {"way": result.way, "shot": result.shot, "query": result.query, "episodes": result.episodes}
    return record_run("evaluate", runs=runs, method=method, dataset=dataset, split=split, seed=seed,
                      run_dir=str(Path(run_dir).resolve()) if run_dir else None, seconds=result.seconds,
                      cpu_seconds=cpu_seconds, config={**suite, **(config or {})},
                      metrics=result.to_dict(per_episode=True))
