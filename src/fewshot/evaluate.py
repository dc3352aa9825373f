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

**Heads on features.** :func:`evaluate_head` runs the same suite with a test-time head
(:mod:`fewshot.heads`) on a frozen backbone's features instead of a method's own
``adapt``: the images of the split are embedded once (:func:`fewshot.features.embed`,
content-keyed, so a feature cache makes a second evaluation free) and each episode
indexes their features, exactly the images :meth:`EpisodeSampler.episode` would give.

**Transductive results are marked.** A result is ``transductive`` when one query's
prediction depends on the other queries of its episode: a transductive head (it is fitted
on all queries at once), or a method that normalises the query batch with its own
statistics (``test_mode == "train"`` with BatchNorm layers: MAML's convention). Such
results depend on the queries per class (``query``, recorded with every result) and are
not comparable with inductive ones as they stand; results, JSON, the run store and the
report say which they are.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .progress import bar as progress_bar

from . import devices
from .config import DEFAULT_PRECISION
from .data.base import to_float_images
from .data.episodes import EpisodeSampler
from .data.tasks import Sampler
from .errors import ConfigError, TrainingError
from .features import FeatureCache, embed
from .heads import Head, run_head
from .methods.base import Method
from .metrics import confidence_interval
from .models.feature_transform import transforms_off
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
    #: The test-time head on features (:func:`evaluate_head`) and its options; None: the method's own adapt.
    head: str | None = None
    head_options: dict | None = None
    #: Whether a query's prediction depended on the episode's other queries (see the module docstring).
    transductive: bool = False
    #: What a head that centres on base-class features was given (``"train split, N images"``,
    #: or the fallback it used); None for a head that takes none.
    base_features: str | None = None

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
                f"({self.episodes} episodes, {self.way}-way {self.shot}-shot){self.inference()}")

    def inference(self) -> str:
        """What the summary adds about the head and transduction ("" for an inductive method's own adapt)."""
        parts = [f"head {self.head}"] if self.head else []
        if self.transductive:
            parts.append(f"transductive: each episode's {self.way * self.query} queries ({self.query} per class) "
                         f"predicted together")
        elif self.head:
            parts.append("inductive")
        return "; " + ", ".join(parts) if parts else ""

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
    _check_count(episodes)
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
    transductive = batch_statistics(model)
    was_training = method.training
    devices.reset_peak_memory(device)
    model.train(method.test_mode == "train")
    scores = np.empty(episodes, dtype=np.float64)
    start = time.perf_counter()
    try:
        # Feature-wise transformation layers are meta-training noise: off at test time, in any mode.
        with transforms_off(model), progress_bar(episodes, desc=desc, unit="episode", enabled=progress,
                                                 leave=False) as bar:
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
                      peak_memory_mb=None if peak is None else round(peak / 2**20, 1), transductive=transductive)


def batch_statistics(method: Method) -> bool:
    """Whether ``method`` normalises each test batch with its own statistics (``test_mode``
    "train" and a BatchNorm layer), which makes its query predictions transductive."""
    if getattr(method, "transductive", False):  # e.g. test-time BatchNorm from support and queries
        return True
    return method.test_mode == "train" and any(
        isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in method.modules())


class MethodFeatures(nn.Module):
    """A trained method's feature extractor (:meth:`Method.features`) as a module for
    :func:`evaluate_head`; evaluated in eval mode, so BatchNorm uses its running statistics."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.features(x)


class StoredImages:
    """The preprocessing of a dataset's images as its episodes give them (uint8 pixels to
    floats in [0, 1], nothing else): what a run trained on the dataset takes."""

    def to_dict(self) -> dict:
        return {"stored_images": "uint8/255"}

    def prepare(self, images) -> torch.Tensor:
        return to_float_images(torch.stack(list(images)))


def class_images(dataset, classes) -> np.ndarray:
    """The dataset indices of every image of ``classes``, class by class."""
    return np.concatenate([np.arange(dataset.class_offsets[c], dataset.class_offsets[c] + dataset.class_counts[c])
                           for c in classes]).astype(np.int64)


def evaluate_head(head: Head, backbone: nn.Module, sampler: EpisodeSampler, episodes: int = 600, *,
                  preprocessing=None, base_split: str | None = "train", cache: FeatureCache | None = None,
                  progress: bool = True, desc: str = "evaluating", device: str | torch.device | None = None,
                  precision: str = DEFAULT_PRECISION, batch_size: int = 64) -> EvalResult:
    """Accuracy of ``head`` on the features ``backbone`` gives, on episodes ``0 .. episodes-1``
    of ``sampler``: the same suite (and CI) :func:`evaluate` scores a method on.

    ``backbone`` maps prepared images to ``(n, d)`` features (a Hugging Face backbone,
    or :class:`MethodFeatures` of a trained method); ``preprocessing`` prepares the
    dataset's images for it (a Hugging Face model's own, or None: :class:`StoredImages`).
    Every image of the sampler's classes is embedded once, on ``device`` in ``precision``
    (``cache``: a :class:`~fewshot.features.FeatureCache` to reuse across calls; progress
    on stderr), then each episode indexes the features. A head that centres on the
    base classes (SimpleShot's CL2N) is given the mean feature of the dataset's
    ``base_split`` when it has one (other than the evaluated split), else it centres on
    each episode's support; ``base_features`` of the result says which. Heads work on
    float32 features on ``device``.
    """
    if not isinstance(head, Head):
        raise ConfigError(f"evaluate_head needs a head (fewshot.heads.build_head), got {type(head).__name__}")
    if not isinstance(sampler, EpisodeSampler):
        raise ConfigError("a head classifies images: evaluate it on a dataset's episodes (an EpisodeSampler), "
                          f"not on {type(sampler).__name__} tasks")
    _check_count(episodes)
    device = devices.module_device(backbone) if device is None else devices.resolve(device)
    devices.check_precision(precision, device)
    preprocessing = StoredImages() if preprocessing is None else preprocessing
    cache = FeatureCache(max_bytes=0) if cache is None else cache
    here = devices.module_device(backbone)
    backbone = backbone if here == device else copy.deepcopy(backbone).to(device)
    dataset = sampler.dataset
    start = time.perf_counter()
    devices.reset_peak_memory(device)

    def features_of(indices: np.ndarray, what: str) -> torch.Tensor:
        if progress:
            print(f"fewshot: embedding {len(indices)} images of {dataset.name} {what} once", file=sys.stderr)
        with devices.autocast(device, precision):
            images = list(dataset.images[torch.from_numpy(indices)])
            return embed(backbone, images, preprocessing, cache=cache, batch_size=batch_size, progress=progress)

    indices = class_images(dataset, sampler.classes)
    features = features_of(indices, f"split '{sampler.split or 'all'}'").to(device)
    if not torch.isfinite(features).all():
        raise TrainingError("the backbone gave non-finite features (NaN or infinite); its weights are unusable")
    row = np.full(len(dataset.images), -1, dtype=np.int64)
    row[indices] = np.arange(len(indices))
    base_note = None
    if head.needs_base_features():
        base_classes = dataset.splits.get(base_split) if base_split else None
        if base_classes and set(base_classes).isdisjoint(sampler.classes.tolist()):
            base = class_images(dataset, base_classes)
            head.fit_base(features_of(base, f"split '{base_split}' (the base classes)").to(device))
            base_note = f"mean feature of {dataset.name} split '{base_split}' ({len(base)} images)"
        else:  # no base classes apart from the evaluated ones: SimpleShot's fallback
            base_note = "each episode's support mean (no training split apart from the evaluated classes)"
    way, shot = sampler.way, sampler.shot
    support_y = torch.arange(way, device=device).repeat_interleave(shot)
    query_y = torch.arange(way, device=device).repeat_interleave(sampler.query)
    scores = np.empty(episodes, dtype=np.float64)
    kind = task_kind(sampler)
    with progress_bar(episodes, desc=desc, unit="episode", enabled=progress, leave=False) as bar:
        for i in range(episodes):
            _, index = sampler.indices(i)  # the images EpisodeSampler.episode(i) gathers, in its order
            support = features[torch.from_numpy(row[index[:, :shot].ravel()]).to(device)]
            query = features[torch.from_numpy(row[index[:, shot:].ravel()]).to(device)]
            with torch.no_grad():
                logits = run_head(head, support, support_y, way, query)
            if not torch.isfinite(logits).all():
                raise TrainingError(f"head '{head.name}' gave non-finite logits (NaN or infinite) on episode {i}; "
                                    "change its options (-o) or the backbone")
            scores[i] = kind.score(logits.float(), query_y)
            bar.update()
            if i % 20 == 19:
                bar.set_postfix({"acc": format(scores[: i + 1].mean(), ".1f")})
    peak, _ = devices.peak_memory(device)
    return EvalResult(scores, way, shot, sampler.query, time.perf_counter() - start, kind.metric,
                      device=str(device), precision=precision,
                      peak_memory_mb=None if peak is None else round(peak / 2**20, 1), head=head.name,
                      head_options=head.get_params(), transductive=head.transductive, base_features=base_note)


def _check_count(episodes: int) -> None:
    if episodes < 1:
        raise ConfigError(f"evaluation needs at least one episode, got {episodes}")
    if episodes > MAX_EPISODES:  # checked before the scores array (and the suite) is allocated
        raise ConfigError(f"evaluation runs at most {MAX_EPISODES:,} episodes, got {episodes:,}")


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
