"""The three kinds of task fewshot learns, each declared once: what it measures and how.

A task kind says what an episode asks and how an answer is scored, so generic code
(training, evaluation, calibration, the report, the CLI) reads the kind instead of
branching on its name:

* **classification**: an N-way K-shot episode of labelled examples; the predictor gives
  one logit per class of the episode; scored by query **accuracy** in % (higher is
  better); trained with cross-entropy.
* **regression**: a task of K labelled points (the sinusoids of Finn et al., 2017,
  arXiv:1703.03400, section 5.1); the predictor gives the target; scored by the query
  **mean squared error** (lower is better); trained with it.
* **reinforcement**: a task is an environment to roll out (:mod:`fewshot.rl`); scored by
  the **return** of the adapted policy (higher is better). Rollouts are simulated on the
  host, so the device rule is "``auto`` means the CPU" and any other device is refused.

:func:`task_kind` looks a kind up by its name, or from anything that carries one (a
sampler's or a family's ``kind``, a method's ``task``); a dataset's kind is
:func:`fewshot.data.tasks.task_kind` (the data layer knows its datasets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .metrics import accuracy, mse


@dataclass(frozen=True)
class TaskKind:
    """One kind of task (see the module docstring). Compared by identity: there are three."""

    name: str
    #: What an episode asks, in words.
    measures: str
    #: The score of an episode (a key of results, a run's best score and the store's records).
    metric: str
    #: Whether a larger score is a better one.
    higher_is_better: bool
    #: How a score and its 95% CI are printed: value format, CI format and unit.
    value_format: str
    ci_format: str
    unit: str = ""
    #: Predictors output one logit per class of the episode: their probabilities can be
    #: calibrated (:mod:`fewshot.calibration`) and they make classifiers (:mod:`fewshot.learner`).
    logits: bool = False
    #: Episodes are environments to roll out, scored by the adapted policy's return, not
    #: labelled examples to predict.
    rollouts: bool = False
    #: The device rule: the work runs on the host, so ``auto`` means the CPU and another
    #: device is refused.
    host_only: bool = False
    #: The backbone a run uses when none is named (None: the configuration's default).
    default_backbone: str | None = None
    #: A command that trains on a dataset of this kind (``{name}``: the dataset).
    train_example: str = ""
    #: The report's panels that show runs of this kind (:data:`fewshot.report.content.FIGURES`).
    panels: tuple[str, ...] = ("learning_curves",)

    @property
    def best_key(self) -> str:
        """The name of a run's best validation score: ``best_accuracy``, ``best_mse``, ``best_return``."""
        return f"best_{self.metric}"

    def better(self, value: float, other: float | None) -> bool:
        """Whether score ``value`` beats ``other`` (None: nothing to beat)."""
        if other is None:
            return True
        return value > other if self.higher_is_better else value < other

    def format(self, value: float, ci95: float) -> str:
        """``accuracy 71.9 ± 1.4 %``, ``mse 0.5432 ± 0.031``, ``return -12.3 ± 1.1``."""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.metric} {value:{self.value_format}} ± {ci95:{self.ci_format}}{unit}"

    def device_request(self, requested: str | None) -> str:
        """The device to resolve for a request (None: ``auto``): the kind's rule applied."""
        requested = "auto" if requested is None else str(requested).strip().lower()
        return "cpu" if self.host_only and requested == "auto" else requested

    def check_device(self, device: Any, what: str) -> None:
        """Refuse a device this kind cannot run on (``what``: the dataset, for the message)."""
        if self.host_only and device is not None and str(device).partition(":")[0] != "cpu":
            raise ConfigError(f"'{what}' is a {self.name} family; its rollouts run on the CPU: "
                              f"use --device cpu (or auto), not {device}")

    # -- supervised kinds: the loss trained and the score of an episode ---------------------

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of predictions ``outputs`` against ``targets``."""
        if self.logits:
            return F.cross_entropy(outputs, targets)
        self._supervised()
        return F.mse_loss(outputs, targets.to(outputs.dtype).view_as(outputs))

    def task_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each task's loss, ``(T,)``, from task-batched ``outputs`` ``(T, N, ...)`` and ``targets`` ``(T, N)``."""
        if self.logits:
            per_example = F.cross_entropy(outputs.flatten(0, 1), targets.flatten(), reduction="none")
            return per_example.view(targets.shape).mean(1)
        self._supervised()
        return (outputs - targets.to(outputs.dtype).view_as(outputs)).pow(2).flatten(1).mean(1)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """One episode's score in :attr:`metric` (accuracy of the argmax in %, or the MSE)."""
        if self.logits:
            return accuracy(outputs, targets)
        self._supervised()
        return mse(outputs, targets)

    def _supervised(self) -> None:
        if self.rollouts:
            raise ConfigError(f"{self.name} tasks are scored by rollouts, not by predictions of targets")


CLASSIFICATION = TaskKind(
    "classification", "which of the episode's N classes each query example belongs to", "accuracy",
    higher_is_better=True, value_format=".1f", ci_format=".1f", unit="%", logits=True,
    train_example="fewshot train protonet --dataset {name}",
    panels=("learning_curves", "comparison", "accuracy_vs_shots", "accuracy_vs_ways", "embedding_map",
            "model_selection"))
REGRESSION = TaskKind(
    "regression", "the target of each query point, from K labelled points of the same function", "mse",
    higher_is_better=False, value_format=".4g", ci_format=".2g",
    train_example="fewshot train maml --dataset {name} --backbone mlp")
REINFORCEMENT = TaskKind(
    "reinforcement", "the return of a policy adapted to an environment from K rollouts", "return",
    higher_is_better=True, value_format=".4g", ci_format=".2g", rollouts=True, host_only=True,
    default_backbone="mlp", train_example="fewshot train maml-rl --env {name}",
    panels=("learning_curves", "return_vs_steps"))

#: Every kind by name.
KINDS: dict[str, TaskKind] = {k.name: k for k in (CLASSIFICATION, REGRESSION, REINFORCEMENT)}


def task_kind(what: Any) -> TaskKind:
    """The kind ``what`` names or carries: a :class:`TaskKind`, a kind's name, or an object
    with a ``kind`` (a sampler, a task family) or a ``task`` (a method) naming one."""
    if isinstance(what, TaskKind):
        return what
    if not isinstance(what, str):
        carried = getattr(what, "kind", None)
        carried = getattr(what, "task", None) if carried is None else carried
        if carried is None:
            raise ConfigError(f"a {type(what).__name__} names no task kind; choose one of: {', '.join(KINDS)}")
        return task_kind(carried)
    if what not in KINDS:
        raise ConfigError(f"unknown task kind '{what}'; choose one of: {', '.join(KINDS)}")
    return KINDS[what]


def kind_of_metric(metric: str) -> TaskKind:
    """The kind scored by ``metric`` (``accuracy``, ``mse`` or ``return``)."""
    for kind in KINDS.values():
        if kind.metric == metric:
            return kind
    raise ConfigError(f"unknown metric '{metric}'; choose one of: {', '.join(k.metric for k in KINDS.values())}")


__all__ = ["CLASSIFICATION", "KINDS", "REGRESSION", "REINFORCEMENT", "TaskKind", "kind_of_metric", "task_kind"]
