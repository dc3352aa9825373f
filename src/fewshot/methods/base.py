"""The one interface every method implements, meta-learner or transfer strategy alike.

A method is an ``nn.Module`` that

* gives an outer-loop objective over a meta-batch of episodes (:meth:`Method.loss`),
  which the one trainer (:mod:`fewshot.train`) minimises; and
* adapts to a new task's support set and returns a predictor of query logits
  (:meth:`Method.adapt`), which the one evaluation path (:mod:`fewshot.evaluate`) calls.

``evaluate`` never needs to know which kind of method it holds.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import torch
from torch import nn

from ..data.episodes import Episode
from ..errors import ConfigError

Predictor = Callable[[torch.Tensor], torch.Tensor]


class Method(nn.Module):
    """Base class of every method.

    Subclasses set ``name`` and implement :meth:`adapt`, and :meth:`loss` if they learn
    across tasks. ``test_mode`` says how the model runs at test time:
    ``"eval"`` puts the module in eval mode, so BatchNorm uses the running statistics
    gathered in meta-training (Prototypical, Matching, Relation Networks); ``"train"``
    keeps train mode, so BatchNorm normalises with the statistics of the task's own batch
    (the transductive convention of MAML, Finn et al., 2017).
    """

    name: ClassVar[str] = "method"
    test_mode: ClassVar[str] = "eval"
    trainable: ClassVar[bool] = True

    def loss(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean outer-loop loss over ``episodes`` and metrics (at least ``accuracy`` in %)."""
        raise NotImplementedError(f"{self.name} does not meta-train")

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        """Adapt to a support set and return ``query_x -> logits (n, way)``."""
        raise NotImplementedError

    def options(self) -> dict:
        """Constructor options, saved with a run so it can be rebuilt."""
        return {}

    def set_test_options(self, **options) -> None:
        """Change how :meth:`adapt` works at test time (e.g. MAML's ``inner_steps``).

        Methods with test-time options override this; the default takes none.
        """
        if options:
            raise ConfigError(f"{self.name} takes no test-time option {', '.join(sorted(options))}")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of ``logits`` whose argmax is ``labels``."""
    return float((logits.argmax(dim=-1) == labels).float().mean()) * 100.0


def class_means(features: torch.Tensor, labels: torch.Tensor, way: int) -> torch.Tensor:
    """Mean feature of each class ``0 .. way-1``: ``(way, d)``."""
    sums = torch.zeros(way, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=way).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]
