"""Methods: every meta-learner and transfer strategy behind one interface (:mod:`.base`).

:data:`METHODS` is the registry by name. A new method is one file in this package
and one :func:`register` call (here for the built-in ones, anywhere for your own).
"""

from __future__ import annotations

import inspect
from typing import Sequence

from torch import nn

from ..errors import ConfigError, did_you_mean
from ..params import check_known
from .base import Method, Predictor, class_means
from .baselines import PixelNearestMean
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
from .reptile import Reptile
from .taskcond import TaskCondNet
from .transfer import FineTune

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Add a :class:`Method` subclass to :data:`METHODS` under its ``name`` (usable as a decorator).

    Registering another class under a taken name is refused, so a plug-in cannot
    silently replace a built-in method.
    """
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"register() takes a Method subclass, got {cls!r}")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ConfigError(f"a method named '{cls.name}' is already registered ({METHODS[cls.name].__qualname__})")
    METHODS[cls.name] = cls
    return cls


for _builtin in (ProtoNet, PixelNearestMean, MatchingNet, RelationNet, MANN, TaskCondNet,
                 MAML, FOMAML, MetaSGD, ANIL, MAMLpp, Reptile, Baseline, BaselinePlusPlus, MAMLRL, R2D2, MetaOptNet, FEAT):
    register(_builtin)
del _builtin


def method_class(name: str) -> type[Method]:
    """The registered class of method ``name``; an unknown name is a :class:`ConfigError` listing the known ones."""
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'{did_you_mean(name, METHODS)}; choose one of: "
                          f"{', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_options(cls: type[Method]) -> dict[str, inspect.Parameter]:
    """The options a user sets on a method (``-o KEY=VALUE``), read from its constructor:
    every parameter but the backbone and what :func:`build_method` fills in from the data
    (image shape, way, classes, task)."""
    filled = {"self", "backbone", *inspect.signature(build_method).parameters}
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
            if n not in filled and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


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
    try:
        return cls(backbone, **context, **options) if cls.needs_backbone else cls(**context, **options)
    except TypeError as e:
        raise ConfigError(f"bad option for method '{name}': {e}") from None


__all__ = ["ANIL", "FOMAML", "MAML", "MANN", "METHODS", "Baseline", "BaselinePlusPlus", "FineTune", "MatchingNet",
           "MetaSGD", "Method", "PixelNearestMean", "Predictor", "ProtoNet", "RelationNet", "Reptile", "TaskCondNet",
           "build_method", "class_means", "method_class", "method_options", "register"]
