"""What a training run gave: :class:`TrainResult`, returned by :meth:`fewshot.train.Trainer.run`
(and importable from :mod:`fewshot.train`, where it was defined before)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..taskkind import kind_of_metric


@dataclass
class TrainResult:
    """What a training run gave. ``best_accuracy`` (classification), ``best_mse``
    (regression) or ``best_return`` (reinforcement) is the best validation score, in the
    run's ``metric``: the field its task kind names (:attr:`~fewshot.taskkind.TaskKind.best_key`,
    read with :attr:`best`)."""

    run_dir: Path
    steps: int
    best_accuracy: float | None
    best_ci95: float | None
    seconds: float
    cpu_seconds: float
    images_per_second: float
    run_id: int | None = None
    metric: str = "accuracy"
    best_mse: float | None = None
    best_return: float | None = None  # reinforcement (fewshot.rl): mean return after adaptation
    #: Why the finished run could not be recorded in the run store (None: it was, or was not asked to be).
    record_error: str | None = None
    device: str = "cpu"
    #: Peak memory of the run in MB, and what was measured (:func:`fewshot.devices.peak_memory`).
    peak_memory_mb: float | None = None
    peak_memory_kind: str = ""
    #: The run had finished before this call (a resume of a finished run): nothing was trained
    #: and nothing new recorded; ``run_id`` is its existing record, if the store has one.
    finished_before: bool = False
    #: The run stopped at ``Trainer.run(pause_at_cpu_minutes=)``: checkpointed, not finished,
    #: validated or recorded; resuming it continues the same run.
    paused: bool = False

    @property
    def best(self) -> float | None:
        """The best validation score, whichever the metric."""
        return getattr(self, kind_of_metric(self.metric).best_key)


__all__ = ["TrainResult"]
