"""The per-task path of the MAML family: one task at a time, run functionally.

**Any module.** The inner loop runs the backbone functionally
(:mod:`fewshot.models.functional`): an unmodified ``nn.Module``, pre-trained or not,
with its parameters swapped for the fast weights. BatchNorm normalises every pass with
the statistics of its own batch (one task's support set, or its query set) and never
touches the running statistics (``batch_norm="task"``, the default; ``"running"``
uses the stored statistics instead, frozen).

Meta-training takes this path for a chunk of one task, and for every task of a model
holding a layer the task-batched path (:mod:`.batched`) does not know; evaluation
always takes it.

**Evaluation** (:meth:`MAML.adapt`) takes first-order steps from detached weights
under ``torch.enable_grad()``: no second-order graph is built and nothing outlives an
episode, so memory stays flat over a 600-episode suite. ``test_inner_steps`` (or
``fewshot evaluate --inner-steps N``, via :meth:`MAML.set_test_options`) may differ
from the training steps; steps beyond those with a learned rate reuse the last one.
"""

from __future__ import annotations

import torch

from ...data.episodes import Episode
from ...taskkind import task_kind
from ..base import Predictor
from .adaptation import Forward


class PerTask:
    """The per-task path of :class:`~fewshot.methods.maml.MAML`, a mixin of it: it reads
    the method's ``task``, ``inner_steps`` and functional model ``_fmodel``, and runs
    its inner loop (:class:`~fewshot.methods.maml.adaptation.Adaptation`)."""

    def _task_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_kind(self.task).loss(out, y)

    def _task_model(self, support_x: torch.Tensor, query_x: torch.Tensor | None, params: dict,
                    detach: bool) -> tuple[Forward, torch.Tensor, torch.Tensor | None, dict]:
        """What the inner loop runs: ``(forward(params, x), support input, query input,
        adapted-start params)``. MAML runs the whole model on the images."""
        return self._fmodel, support_x, query_x, params

    def _episode_loss(self, ep: Episode, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Query loss (with its graph) and query outputs of one episode after the inner loop."""
        start = self._start(ep.way, detach=False)
        forward, sx, qx, params = self._task_model(ep.support_x, ep.query_x, start, detach=False)
        fast = self._inner_loop(forward, params, sx, ep.support_y, self.inner_steps, create_graph, detach=False)
        out = forward(self._step_params(fast, max(self.inner_steps - 1, 0)), qx)
        return self._task_loss(out, ep.query_y), out

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        """``self._test_steps()`` first-order steps on the support set; a predictor of the query.

        Runs under ``torch.enable_grad()`` (evaluation calls it under ``no_grad``) from
        detached weights: nothing is kept between steps, or after the episode, but the
        fast weights the predictor closes over.
        """
        self._check_input(support_x)
        with torch.enable_grad():
            start = self._start(way, detach=True)
            forward, sx, _, params = self._task_model(support_x, None, start, detach=True)
            fast = self._inner_loop(forward, params, sx, support_y, self._test_steps(), create_graph=False,
                                    detach=True)
        return self._predictor(fast)

    def _predictor(self, fast: dict) -> Predictor:
        return AdaptedPredictor(self, fast)


class AdaptedPredictor:
    """``query_x -> outputs`` of a model with adapted weights ``weights`` (detached; for
    ANIL the head's only). Runs without gradients."""

    def __init__(self, method: PerTask, weights: dict):
        self.method, self.weights = method, weights

    def __call__(self, query_x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            forward, _, qx, params = self.method._task_model(query_x[:0], query_x, self.weights, detach=True)
            return forward(params, qx)


__all__ = ["AdaptedPredictor", "PerTask"]
