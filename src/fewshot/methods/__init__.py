"""Methods: every meta-learner and transfer strategy behind one interface."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .base import Method, Predictor, accuracy, class_means
from .baselines import PixelNearestMean
from .protonet import ProtoNet

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (ProtoNet, PixelNearestMean)}


def build_method(name: str, backbone: nn.Module | None, **options) -> Method:
    """Instantiate method ``name`` around ``backbone`` with its ``options``."""
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    try:
        return cls(backbone, **options) if cls.trainable else cls(**options)
    except TypeError as e:
        raise ConfigError(f"bad option for method '{name}': {e}") from None


__all__ = ["METHODS", "Method", "Predictor", "PixelNearestMean", "ProtoNet", "accuracy", "build_method", "class_means"]
