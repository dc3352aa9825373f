"""Test-time BatchNorm statistics from the task at hand, for domain shift.

A backbone's BatchNorm layers normalise with statistics gathered on the training domain;
on another domain (inverted, blurred, other images) those statistics are wrong, and every
layer after the first sees shifted features. Re-estimating them on the target task's own
images is the simplest adaptation there is (Li et al.'s AdaBN, arXiv:1603.04779; Nado et
al.'s prediction-time BatchNorm, arXiv:2006.10963; Du et al.'s TaskNorm analysis for
few-shot learning, arXiv:2003.03284):

* ``SupportBatchNorm(method)`` (**inductive**): each episode, every BatchNorm layer of the
  backbone takes the mean and variance of its input over the *support images* (in one pass,
  nothing else mixed in), and the queries are normalised with them; a query's prediction
  depends on the support set and itself alone.
* ``SupportBatchNorm(method, transductive=True)`` (**transductive**, marked so in every
  result): the statistics come from the support and *query images* together (never their
  labels), so a query's prediction depends on the other queries of the episode.

Labels never enter: statistics are computed from images only, and :meth:`adapt` is never
given the query labels at all. Only the backbone's BatchNorm layers are re-estimated; any
others (a relation module's) keep their training statistics. The wrapped method is copied:
the original keeps its weights and statistics. Methods that already normalise each test
batch with its own statistics (``test_mode == "train"``: the MAML family) are refused.

``fewshot evaluate RUN --adapt support-bn`` (or ``transductive-bn``) evaluates a run so.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ConfigError
from .base import Method, Predictor

#: The ``--adapt`` names: statistics from the support set, or from support and queries.
BN_ADAPTATIONS = {"support-bn": False, "transductive-bn": True}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class SupportBatchNorm(Method):
    """``method`` with its backbone's BatchNorm statistics re-estimated per episode (see the
    module docstring)."""

    name = "support-bn"
    learns_across_tasks = False
    test_mode = "eval"

    def __init__(self, method: Method, transductive: bool = False):
        if not isinstance(method, Method) or method.backbone is None:
            raise ConfigError("test-time BatchNorm adapts a method with a backbone (a trained run's), "
                              f"not {type(method).__name__}")
        if method.test_mode == "train":
            raise ConfigError(f"{method.name} already normalises each test batch with its own statistics "
                              "(test_mode 'train'); test-time BatchNorm is for methods evaluated in eval mode")
        inner = copy.deepcopy(method)
        super().__init__(inner.backbone)
        self.inner, self.transductive = inner, bool(transductive)
        self.norms = [m for m in inner.backbone.modules() if isinstance(m, _NORMS)]
        if not self.norms:
            raise ConfigError(f"{method.name}'s backbone has no BatchNorm layer to re-estimate")
        self.name = f"{method.name}+{'transductive' if transductive else 'support'}-bn"

    @torch.no_grad()
    def estimate(self, images: torch.Tensor) -> None:
        """Every BatchNorm layer of the backbone set to the mean and (unbiased) variance of its
        input over ``images``, in one pass; the layers are in eval mode again after."""
        was = [(m.training, m.momentum) for m in self.norms]
        for m in self.norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one pass, exactly this batch's statistics
            m.train()
        try:
            self.inner.features(images)
        finally:
            for m, (training, momentum) in zip(self.norms, was):
                m.momentum = momentum
                m.train(training)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        self.inner.eval()
        if not self.transductive:
            self.estimate(support_x)
            return self.inner.adapt(support_x, support_y, way)

        def predict(query_x: torch.Tensor) -> torch.Tensor:
            self.estimate(torch.cat([support_x, query_x]))  # images only: no label enters
            return self.inner.adapt(support_x, support_y, way)(query_x)
        return predict


def with_test_time_bn(method: Method, adaptation: str) -> SupportBatchNorm:
    """``method`` under test-time BatchNorm ``adaptation`` (a key of :data:`BN_ADAPTATIONS`)."""
    if adaptation not in BN_ADAPTATIONS:
        raise ConfigError(f"unknown test-time BatchNorm '{adaptation}'; choose one of: {', '.join(BN_ADAPTATIONS)}")
    return SupportBatchNorm(method, transductive=BN_ADAPTATIONS[adaptation])


__all__ = ["BN_ADAPTATIONS", "SupportBatchNorm", "with_test_time_bn"]
