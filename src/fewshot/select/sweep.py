"""Ground truth as the model-selection papers build it: each model tuned to the task, then measured.

A model's accuracy after one fixed recipe says as much about the recipe as about the
model (a 20-step fine-tune leaves some models at chance that a linear probe lifts well
above it). The anchors (LogME, arXiv:2102.11005; SFDA, arXiv:2207.09785; Model Spider,
arXiv:2306.03900) instead take each model's best over a small hyper-parameter sweep. Here,
for each (task, model), :func:`sweep` adapts with every :class:`Setting` of a small grid —
the linear probe, fine-tuning at learning rate × steps, and LP-FT — chooses the setting
with the highest accuracy on a **validation split inside the task's support set**
(stratified folds of :func:`~.measure.fold_accuracy`; the queries are never looked at),
then adapts with it on the whole support set and measures the queries; a setting whose
adapted model then fails to fit its own support set (:func:`failed_to_fit`) is passed
over for the next. The chosen setting is recorded. :func:`collapsed` flags a run left at
chance while the model's linear probe is above it; :func:`collapse_report` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import ConfigError
from ..models.pretrained import Pretrained
from .measure import ADAPTATIONS, accuracy_of, fold_accuracy, predict


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

#: Adapt on (train_x, train_y) with a setting, then predict eval_x: (predicted labels, CPU s).
Adapt = Callable[[Setting, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, float]]


def model_adapter(model: Pretrained, way: int) -> Adapt:
    """:func:`~.measure.predict` of ``model`` as an :data:`Adapt`."""
    return lambda s, tx, ty, ex: predict(model, tx, ty, ex, way, s.strategy, s.options)


def sweep(adapt: Adapt, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
          query_y: torch.Tensor, way: int, settings: Sequence[Setting] = SWEEP, folds: int = 2) -> dict:
    """The ground truth of one (task, model): the best setting on validation, measured on the queries.

    Each setting's validation accuracy is pooled over ``folds`` stratified folds of the
    support set (:func:`~.measure.fold_accuracy`). The best one (the first on ties) is
    adapted on the whole support set and scored on the queries, unless its model then
    **failed to fit** its own support set (:func:`failed_to_fit`: it diverged, or is far
    from converged). Then the next setting by validation is taken, as a practitioner drops a
    run whose training accuracy stayed low; if none fits, the one that fits the support set
    best is kept. The guard is needed because validation inside a small support set is
    coarse (at 1 shot and 2 folds, two held-out examples): a run that predicts one class
    scores 50 % there by luck. It reads the support labels only, never the queries'. The
    linear probe is scored on the queries too, for :func:`collapsed` only.

    Returns ``accuracy`` (the chosen setting's query accuracy, %), ``setting`` (its name),
    ``validation`` ({name: accuracy %}), ``failed_to_fit`` (the names passed over, best first),
    ``support_accuracy`` (the chosen model's on its own support set), ``probe_accuracy``,
    ``chance`` (100 / way), ``collapsed`` and ``cpu_seconds``.
    """
    if not settings:
        raise ConfigError("a sweep needs at least one setting")
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise ConfigError(f"the sweep lists a setting twice: {names}")
    validation, cpu = {}, 0.0
    for setting in settings:
        def scored(tx, ty, hx, hy, setting=setting):
            predicted, seconds = adapt(setting, tx, ty, hx)
            return accuracy_of(predicted, hy), seconds
        validation[setting.name], seconds = fold_accuracy(scored, support_x, support_y, folds)
        cpu += seconds
    ranked = sorted(settings, key=lambda s: -validation[s.name])  # a stable sort keeps the first of equal ones
    both, n = torch.cat([query_x, support_x]), len(query_x)  # one adaptation predicts the queries and the support
    tried = []  # (setting, query accuracy, support accuracy) of the settings that failed to fit
    for chosen in ranked:
        predicted, seconds = adapt(chosen, support_x, support_y, both)
        cpu += seconds
        accuracy, fit = accuracy_of(predicted[:n], query_y), accuracy_of(predicted[n:], support_y)
        if not failed_to_fit(fit, way):
            break
        tried.append((chosen, accuracy, fit))
    else:  # none fits its support set: the one that fits it best (max keeps the first, by validation, of equals)
        chosen, accuracy, fit = max(tried, key=lambda t: t[2])
    passed_over = [s.name for s, _, _ in tried if s != chosen]
    adapted = {s: a for s, a, _ in tried} | {chosen: accuracy}  # query accuracies already measured
    if PROBE in adapted:
        probe = adapted[PROBE]
    else:
        predicted, seconds = adapt(PROBE, support_x, support_y, query_x)
        probe, cpu = accuracy_of(predicted, query_y), cpu + seconds
    return {"accuracy": accuracy, "setting": chosen.name, "validation": validation, "failed_to_fit": passed_over,
            "support_accuracy": fit, "probe_accuracy": probe, "chance": 100.0 / way,
            "collapsed": collapsed(accuracy, probe, way), "cpu_seconds": cpu}


def failed_to_fit(support_accuracy: float, way: int, *, at_chance: float = 2.0) -> bool:
    """An adaptation whose model misclassifies at least half of its own support set (the
    examples it trained on), or is within ``at_chance`` points of chance there (100 / way;
    what a run that predicts one class scores): it diverged or is far from converged, and a
    model that cannot fit its training examples is no measure of what the model can do."""
    return support_accuracy < 50.0 or support_accuracy <= 100.0 / way + at_chance


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


__all__ = ["PROBE", "SWEEP", "Setting", "collapse_report", "collapsed", "failed_to_fit", "model_adapter", "sweep"]
