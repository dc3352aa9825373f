"""Methods: every meta-learner and transfer strategy behind one interface (:mod:`.base`).

:data:`METHODS` is the registry by name (a :class:`~fewshot.registry.Registry`). A new
method is one class decorated with :func:`register`: in this package for the built-in
ones, anywhere for your own, or in an installed plug-in (:mod:`fewshot.registry`).
"""

from __future__ import annotations

import inspect
from typing import Sequence

from torch import nn

from ..errors import ConfigError
from ..models.feature_transform import learned_transforms
from ..params import check_known
from .base import METHODS, Method, Predictor, class_means, register
# Each method registers itself where it is defined (@register): importing it is what adds it.
from .baselines import PixelNearestMean
from .dn4 import DN4
from .feat import FEAT
from .mann import MANN
from .maml import ANIL, FOMAML, MAML, MetaSGD
from .maml_rl import MAMLRL
from .metaoptnet import MetaOptNet
from .mamlpp import MAMLpp
from .matching import MatchingNet
from .pretrain import Baseline, BaselinePlusPlus
from .protonet import ProtoNet
from .r2d2 import R2D2
from .relation import RelationNet
from .rl2 import RL2
from .reptile import Reptile
from .taskcond import TaskCondNet
from .transfer import FineTune


def method_class(name: str) -> type[Method]:
    """The registered class of method ``name``; an unknown name is a :class:`ConfigError` listing the known ones."""
    return METHODS[name]


def method_options(cls: type[Method]) -> dict[str, inspect.Parameter]:
    """The options a user sets on a method (``-o KEY=VALUE``), read from its constructor:
    every parameter but the backbone and what :func:`build_method` fills in from the data
    (image shape, way, classes, task)."""
    filled = {"self", "backbone", *inspect.signature(build_method).parameters}
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
            if n not in filled and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


def resolved_options(method: Method) -> dict:
    """The options ``method`` was built with, every one (defaults filled in): what a run
    saves, so that it says how its method was configured even where the user set nothing."""
    options = method_options(type(method))
    return {k: v for k, v in method.get_params().items() if k in options}


def build_method(name: str, backbone: nn.Module | None, *, image_shape: tuple[int, ...] | None = None,
                 way: int | None = None, classes: Sequence[int] | None = None, task: str | None = None,
                 **options) -> Method:
    """Instantiate method ``name`` around ``backbone`` with its ``options``.

    ``image_shape`` (channels, height, width), ``way`` (of training episodes) and
    ``classes`` (the dataset class ids of the training split) are passed to the methods
    whose constructor takes them (e.g. to size a head), and only to those. ``task``
    (``classification`` or ``regression``, what the data is) must be one the method
    does (its ``tasks``); a method that does several is told which.
    """
    cls = method_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    context = {k: v for k, v in (("image_shape", image_shape), ("way", way), ("classes", classes))
               if k in accepted and v is not None}
    if task is not None:
        if task not in cls.tasks:
            able = sorted(n for n, c in METHODS.items() if task in c.tasks)
            raise ConfigError(f"method '{name}' does {' and '.join(cls.tasks)} only; for {task} data use one of: "
                              f"{', '.join(able)}")
        if len(cls.tasks) > 1:
            options["task"] = task
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        check_known(f"method '{name}'", [k for k in options if k != "task"], method_options(cls),
                    how=f" (`fewshot methods {name}` gives their defaults)")
    if learned_transforms(backbone) and cls.loss is not Method.loss:
        # Learning-to-learn is the per-episode loop's step (fewshot.methods.lft).
        raise ConfigError(f"{name} has its own outer loss; learned FT layers train with a metric method (protonet, "
                          "matching, relation, ...): use fixed ones with it (backbone option learned=false)")
    try:
        return cls(backbone, **context, **options) if cls.needs_backbone else cls(**context, **options)
    except TypeError as e:
        raise ConfigError(f"bad option for method '{name}': {e}") from None


__all__ = ["ANIL", "FOMAML", "MAML", "MANN", "METHODS", "Baseline", "BaselinePlusPlus", "FineTune", "MatchingNet",
           "MetaSGD", "Method", "PixelNearestMean", "Predictor", "ProtoNet", "RL2", "RelationNet", "Reptile",
           "TaskCondNet",
           "build_method", "class_means", "method_class", "method_options", "register", "resolved_options"]
