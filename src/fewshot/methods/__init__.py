"""Methods: every meta-learner and transfer strategy behind one interface."""

from __future__ import annotations

import inspect
from typing import Sequence

from torch import nn

from ..errors import ConfigError
from .base import Method, Predictor, accuracy, class_means
from .baselines import PixelNearestMean
from .mann import MANN
from .maml import ANIL, FOMAML, MAML, MetaSGD
from .maml_rl import MAMLRL
from .matching import MatchingNet
from .pretrain import Baseline, BaselinePlusPlus
from .protonet import ProtoNet
from .relation import RelationNet
from .reptile import Reptile
from .taskcond import TaskCondNet
from .transfer import FineTune

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (ProtoNet, PixelNearestMean, MatchingNet, RelationNet, MANN, TaskCondNet,
                          MAML, FOMAML, MetaSGD, ANIL, Reptile, Baseline, BaselinePlusPlus, MAMLRL)
}


def build_method(name: str, backbone: nn.Module | None, *, image_shape: tuple[int, ...] | None = None,
                 way: int | None = None, classes: Sequence[int] | None = None, task: str | None = None,
                 **options) -> Method:
    """Instantiate method ``name`` around ``backbone`` with its ``options``.

    ``image_shape`` (channels, height, width), ``way`` (of training episodes) and
    ``classes`` (the dataset class ids of the training split) are passed to the methods
    whose constructor takes them (e.g. to size a head), and only to those. ``task``
    (``classification`` or ``regression``, what the data is) too; a method that cannot
    do regression is refused for regression data.
    """
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    accepted = inspect.signature(cls.__init__).parameters
    context = {k: v for k, v in (("image_shape", image_shape), ("way", way), ("classes", classes))
               if k in accepted and v is not None}
    if task is not None:
        if "task" in accepted:
            options["task"] = task
        elif task != "classification":
            able = sorted(n for n, c in METHODS.items() if "task" in inspect.signature(c.__init__).parameters)
            raise ConfigError(f"method '{name}' does classification only; for {task} data use one of: {', '.join(able)}")
    try:
        return cls(backbone, **context, **options) if cls.trainable else cls(**options)
    except TypeError as e:
        raise ConfigError(f"bad option for method '{name}': {e}") from None


__all__ = ["ANIL", "FOMAML", "MAML", "MANN", "METHODS", "Baseline", "BaselinePlusPlus", "FineTune", "MatchingNet",
           "MetaSGD", "Method", "PixelNearestMean", "Predictor", "ProtoNet", "RelationNet", "Reptile", "TaskCondNet",
           "accuracy", "build_method", "class_means"]
