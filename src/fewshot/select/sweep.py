"""Ground truth as the model-selection papers build it: each model tuned to the task, then measured.

A model's accuracy after one fixed recipe says as much about the recipe as about the
model (a 20-step fine-tune leaves some models at chance that a linear probe lifts well
above it). The anchors (LogME, arXiv:2102.11005; SFDA, arXiv:2207.09785; Model Spider,
arXiv:2306.03900) instead take each model's best over a small hyper-parameter sweep. Here,
for each (task, model), :func:`sweep` adapts with every :class:`Setting` of a small grid —
the linear probe, fine-tuning at learning rate × steps, and LP-FT — chooses the setting
with the highest accuracy on a **validation split inside the task's support set**
(stratified folds of :func:`~.measure.fold_accuracy`; the queries are never looked at),
then adapts with it on the whole support set and measures the queries. The chosen setting
is recorded. :func:`collapsed` flags a run left at chance while the model's linear probe is
above it; :func:`collapse_report` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import ConfigError
from ..models.pretrained import Pretrained
from .measure import ADAPTATIONS, fold_accuracy, measure


@dataclass(frozen=True)
class Setting:
    """One candidate adaptation: a strategy of :data:`~.measure.ADAPTATIONS` and, for the
    fine-tuning ones, the head learning rate and the number of steps (the backbone learns at
    a tenth of the rate, :data:`~fewshot.methods.transfer.DEFAULTS`)."""

    strategy: str
    lr: float | None = None
    steps: int | None = None

    def __post_init__(self):
        if self.strategy not in ADAPTATIONS:
            raise ConfigError(f"unknown adaptation '{self.strategy}'; choose one of: {', '.join(ADAPTATIONS)}")
        tuned = self.strategy != "linear-probe"
        if tuned != (self.lr is not None and self.steps is not None):
            raise ConfigError(f"{self.strategy} needs lr and steps" if tuned else "the linear probe takes no lr or steps")
        if tuned and not (self.lr > 0 and 1 <= self.steps <= 10_000):
            raise ConfigError(f"lr must be positive and steps within 1-10000, got lr={self.lr}, steps={self.steps}")

    @property
    def name(self) -> str:
        return self.strategy if self.lr is None else f"{self.strategy} lr={self.lr:g} steps={self.steps}"

    @property
    def options(self) -> dict | None:
        return None if self.lr is None else {"lr": self.lr, "steps": self.steps}


#: The default sweep: the probe, fine-tuning at 2 learning rates × 2 lengths, and LP-FT.
#: Order matters only for ties in validation accuracy: the first (cheapest) setting wins.
SWEEP: tuple[Setting, ...] = (
    Setting("linear-probe"),
    Setting("finetune", 0.01, 25), Setting("finetune", 0.01, 100),
    Setting("finetune", 0.1, 25), Setting("finetune", 0.1, 100),
    Setting("lp-ft", 0.01, 50),
)
PROBE = Setting("linear-probe")

#: Adapt on (train_x, train_y) with a setting, score on (test_x, test_y): (accuracy %, CPU s).
Adapt = Callable[[Setting, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[float, float]]


def model_adapter(model: Pretrained, way: int) -> Adapt:
    """:func:`~.measure.measure` of ``model`` as an :data:`Adapt`."""
    return lambda s, tx, ty, ex, ey: measure(model, tx, ty, ex, ey, way, s.strategy, s.options)


def sweep(adapt: Adapt, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
          query_y: torch.Tensor, way: int, settings: Sequence[Setting] = SWEEP, folds: int = 2) -> dict:
    """The ground truth of one (task, model): the best setting on validation, measured on the queries.

    Each setting's validation accuracy is pooled over ``folds`` stratified folds of the
    support set (:func:`~.measure.fold_accuracy`). The chosen one (highest validation
    accuracy, the first on ties) is adapted on the whole support set and scored on the
    queries; so is the linear probe, for :func:`collapsed` only. Returns ``accuracy`` (the
    chosen setting's query accuracy, %), ``setting`` (its name), ``validation`` ({name:
    accuracy %}), ``probe_accuracy``, ``chance`` (100 / way), ``collapsed`` and ``cpu_seconds``.
    """
    if not settings:
        raise ConfigError("a sweep needs at least one setting")
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise ConfigError(f"the sweep lists a setting twice: {names}")
    validation, cpu = {}, 0.0
    for setting in settings:
        accuracy, seconds = fold_accuracy(lambda tx, ty, hx, hy: adapt(setting, tx, ty, hx, hy),
                                          support_x, support_y, folds)
        validation[setting.name], cpu = accuracy, cpu + seconds
    chosen = max(settings, key=lambda s: validation[s.name])  # max keeps the first of equal ones
    accuracy, seconds = adapt(chosen, support_x, support_y, query_x, query_y)
    cpu += seconds
    if chosen == PROBE:
        probe = accuracy
    else:
        probe, seconds = adapt(PROBE, support_x, support_y, query_x, query_y)
        cpu += seconds
    chance = 100.0 / way
    return {"accuracy": accuracy, "setting": chosen.name, "validation": validation, "probe_accuracy": probe,
            "chance": chance, "collapsed": collapsed(accuracy, probe, way), "cpu_seconds": cpu}


def collapsed(accuracy: float, probe_accuracy: float, way: int, *, at_chance: float = 2.0,
              above: float = 10.0) -> bool:
    """A collapsed run: query accuracy within ``at_chance`` points of chance (100 / way; a
    model that predicts one class scores exactly that) while the linear probe of the same
    model is at least ``above`` points over chance, so the features were not the problem."""
    chance = 100.0 / way
    return accuracy <= chance + at_chance and probe_accuracy >= chance + above


def collapse_report(records: Sequence[dict]) -> dict:
    """How many of :func:`sweep`'s records collapsed (the target is 0), and which."""
    bad = [r for r in records if r["collapsed"]]
    return {"runs": len(records), "collapsed": len(bad),
            "examples": [{k: r.get(k) for k in ("task", "model", "setting", "accuracy", "probe_accuracy", "chance")}
                         for r in bad[:10]]}


__all__ = ["PROBE", "SWEEP", "Setting", "collapse_report", "collapsed", "model_adapter", "sweep"]
