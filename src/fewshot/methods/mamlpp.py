"""MAML++ (Antoniou, Edwards and Storkey, "How to train your MAML", ICLR 2019, arXiv:1810.09502).

MAML with the paper's fixes for its instability and cost, each an option:

* **Multi-step loss (MSL)** ``multi_step_loss``: the outer loss is a weighted sum of the
  query losses after *every* inner step, not only the last. The weights start uniform
  (1/N each) and are annealed linearly over ``msl_iterations`` meta-iterations towards
  the last step (the others keep 0.03/N); afterwards only the last step's loss counts.
  This is the schedule of the authors' code (``get_per_step_loss_importance_vector``),
  whose 15 epochs of 500 iterations give the default 7,500.
* **Per-step BatchNorm** ``per_step_bn``: every BatchNorm layer gets its own weights and
  biases for each inner step (BNWB, learned in the outer loop, not adapted in the
  inner loop) and gathers running statistics per step (BNRS). Passes normalise with
  the batch's statistics, as the authors' code does in training and at test time
  alike; ``test_batch_norm="per_step"`` normalises evaluation passes with step s's
  running statistics instead.
* **Learned per-layer per-step inner rates (LSLR)**: one learned rate per parameter
  tensor and inner step (``step_lrs``, initialised at ``inner_lr``), as MAML's
  ``learn_inner_lr``; on by default.
* **Derivative-order annealing (DA)** ``first_order_iterations``: first-order
  meta-gradients for the first iterations, second order afterwards (the paper switches
  after 50 epochs of 500 iterations: 25,000).
* **Cosine annealing of the outer rate (CA)**: an outer-loop schedule, so it lives in the
  trainer: ``TrainConfig(lr_schedule="cosine", lr_min=...)`` anneals the rate from
  ``lr`` to ``lr_min`` over ``episodes`` meta-iterations (the paper: 1e-3 to 1e-5).

BOIL (Oh, Yoo, Kim and Yun, ICLR 2021, arXiv:2008.08882), the inner loop on the body
with the head frozen, is ``boil=True`` on any MAML-family method.

The meta-iteration counter (``iteration``, a buffer saved with the weights) drives the
two annealing schedules, so a resumed run continues them where it stopped. Everything
else (the head, task batching, evaluation, regression) is :class:`~fewshot.methods.maml.MAML`'s.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..data.episodes import Episode
from ..errors import ConfigError
from ..models.functional import FunctionalModule, norm_layers
from ..params import Boolean, Integer, OneOf
from .base import register
from .maml import MAML, OPTIONS, AdaptedPredictor

TEST_BATCH_NORM = ("task", "per_step")


def msl_weights(steps: int, progress: float) -> list[float]:
    """Antoniou et al.'s per-step loss weights at ``progress`` (0 to 1) of the annealing.

    Every step starts at 1/N; each but the last loses ``progress``/N, down to 0.03/N,
    and the last gains what they lose, up to 1 - 0.03 (N-1)/N.
    """
    floor = 0.03 / steps
    weights = [max(1.0 / steps - progress / steps, floor) for _ in range(steps - 1)]
    weights.append(min(1.0 / steps + progress * (steps - 1) / steps, 1.0 - (steps - 1) * floor))
    return weights


@register
class MAMLpp(MAML):
    """MAML++ (see the module docstring). Options beyond MAML's: ``multi_step_loss``,
    ``msl_iterations``, ``first_order_iterations``, ``per_step_bn``, ``test_batch_norm``
    (``task`` / ``per_step``); defaults follow the paper's Omniglot setting (5 inner
    steps, rates initialised at 0.1)."""

    name = "mamlpp"
    _parameter_constraints = {**OPTIONS, "inner_steps": Integer(low=1), "multi_step_loss": Boolean(),
                              "msl_iterations": Integer(low=0), "first_order_iterations": Integer(low=0),
                              "per_step_bn": Boolean(), "test_batch_norm": OneOf(*TEST_BATCH_NORM)}

    def __init__(self, backbone: nn.Module, way: int = 5, inner_steps: int = 5, inner_lr: float | None = 0.1,
                 first_order: bool = False, learn_inner_lr: bool = True, test_inner_steps: int | None = None,
                 task: str = "classification", image_shape: Sequence[int] | None = None,
                 in_features: int | None = None, batch_norm: str = "task",
                 task_batching: bool = True, task_chunk: int | None = None, boil: bool = False,
                 multi_step_loss: bool = True, msl_iterations: int = 7500, first_order_iterations: int = 25000,
                 per_step_bn: bool = True, test_batch_norm: str = "task"):
        self.multi_step_loss, self.per_step_bn = multi_step_loss, per_step_bn
        self.msl_iterations, self.first_order_iterations = msl_iterations, first_order_iterations
        self.test_batch_norm = test_batch_norm
        super().__init__(backbone, way=way, inner_steps=inner_steps, inner_lr=inner_lr,
                         first_order=first_order, learn_inner_lr=learn_inner_lr, test_inner_steps=test_inner_steps,
                         task=task, image_shape=image_shape, in_features=in_features, batch_norm=batch_norm,
                         task_batching=task_batching, task_chunk=task_chunk, boil=boil)
        if test_batch_norm == "per_step" and not per_step_bn:
            raise ConfigError("mamlpp test_batch_norm='per_step' needs per_step_bn=true")
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self._bn_names: list[str] = []  # "<layer>.weight" / "<layer>.bias" with per-step copies
        self._bn_layers: list[tuple[str, nn.Module]] = []
        if per_step_bn:
            self._init_per_step_bn()
        self._step: int | None = None  # the inner step whose pass runs now (per-step statistics)
        self._observing = self._evaluating = False
        self._gathered: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._fmodel_running = FunctionalModule(self, "running")

    # -- per-step BatchNorm -------------------------------------------------------------

    def _norms(self) -> list[tuple[str, nn.Module]]:
        return [(f"{name}.", layer) for name, layer in norm_layers(self)
                if name.startswith(("backbone.", "head."))]

    def _init_per_step_bn(self) -> None:
        steps = self.inner_steps
        weights, stats = [], []
        for prefix, layer in self._norms():
            self._bn_layers.append((prefix, layer))
            for kind in ("weight", "bias"):
                own = getattr(layer, kind, None)
                if isinstance(own, nn.Parameter):
                    self._bn_names.append(prefix + kind)
                    weights.append(nn.Parameter(own.detach().clone().unsqueeze(0).repeat(steps, 1)))
            channels = layer.num_features
            stats.append((torch.zeros(steps, channels), torch.ones(steps, channels)))
        # BNWB: learned in the outer loop, one row per inner step.
        self.bn_step_params = nn.ParameterList(weights)
        for i, (mean, var) in enumerate(stats):
            self.register_buffer(f"bn_step_mean_{i}", mean)
            self.register_buffer(f"bn_step_var_{i}", var)

    def _adapted_names(self) -> list[str]:
        names = super()._adapted_names()
        if not self.per_step_bn:
            return names
        # BatchNorm's weights are per step and learned in the outer loop only (as the
        # authors' default, enable_inner_loop_optimizable_bn_params=False).
        norm = tuple(prefix for prefix, _ in self._norms())
        names = [n for n in names if not n.startswith(norm)]
        if not names:
            raise ConfigError(f"{self.name} has no trainable parameters to adapt besides BatchNorm's")
        return names

    def _step_params(self, params: dict, step: int) -> dict:
        self._step = min(step, self.inner_steps - 1)
        if not self._bn_names:
            return params
        out = dict(params)
        for name, per_step in zip(self._bn_names, self.bn_step_params):
            out[name] = per_step[self._step]
        if self._evaluating and self.test_batch_norm == "per_step":
            for i, (prefix, _) in enumerate(self._bn_layers):
                out[prefix + "running_mean"] = getattr(self, f"bn_step_mean_{i}")[self._step]
                out[prefix + "running_var"] = getattr(self, f"bn_step_var_{i}")[self._step]
        return out

    def _record(self, index: int, x: torch.Tensor, tasks: int) -> None:
        """Add a pass's batch statistics (each task's) to those of the current inner step."""
        if not self._observing or self._step is None:
            return
        with torch.no_grad():
            h = x.detach().transpose(0, 1).reshape(x.shape[1], -1)  # (T·C, values per channel)
            h = h.view(tasks, -1, h.shape[1])
            mean = h.mean(2).sum(0)
            var = h.var(2).sum(0) if h.shape[2] > 1 else torch.zeros_like(mean)
            key = (index, self._step)
            old = self._gathered.get(key)
            self._gathered[key] = (mean, var, tasks) if old is None else (old[0] + mean, old[1] + var, old[2] + tasks)

    def _update_statistics(self) -> None:
        """Fold the meta-batch's statistics into each step's running ones (BNRS), with the
        layer's momentum: one update per meta-iteration, whether the tasks ran
        batched, in chunks or one by one."""
        with torch.no_grad():
            for (index, step), (mean, var, count) in self._gathered.items():
                layer = self._bn_layers[index][1]
                momentum = layer.momentum if layer.momentum is not None else 0.1
                running_mean = getattr(self, f"bn_step_mean_{index}")[step]
                running_var = getattr(self, f"bn_step_var_{index}")[step]
                running_mean.lerp_((mean / count).to(running_mean.dtype), momentum)
                running_var.lerp_((var / count).to(running_var.dtype), momentum)
        self._gathered = {}

    def _restart(self) -> None:
        self._gathered = {}

    def _batched_task_model(self, support_x, query_x, params, detach):
        forward, sx, qx, params = super()._batched_task_model(support_x, query_x, params, detach)
        if not self._bn_layers:
            return forward, sx, qx, params
        index = {prefix: i for i, (prefix, _) in enumerate(self._bn_layers)}
        tasks = support_x.shape[0]

        def observe(prefix, layer, h):
            self._record(index[prefix], h, tasks)

        def batched(p, x, twice=False):
            return forward(p, x, twice, observe=observe)

        return batched, sx, qx, params

    # -- the schedules ------------------------------------------------------------------

    def _create_graph(self) -> bool:
        """Derivative-order annealing: first order until ``first_order_iterations``."""
        return not self.first_order and int(self.iteration) >= self.first_order_iterations

    def step_weights(self) -> list[float] | None:
        """The multi-step loss weights of this meta-iteration, or None when only the last step counts."""
        if not self.multi_step_loss or int(self.iteration) >= self.msl_iterations:
            return None
        return msl_weights(self.inner_steps, int(self.iteration) / max(1, self.msl_iterations))

    # -- the outer objective ------------------------------------------------------------

    def _multi_step(self, forward, params, sx, sy, qx, qy, create_graph: bool, batched: bool):
        weights = self.step_weights()
        total, out = 0.0, None
        for step in range(self.inner_steps):
            params = self._inner_loop(forward, params, sx, sy, 1, create_graph, detach=False, batched=batched,
                                      first_step=step)
            if weights is None and step < self.inner_steps - 1:
                continue
            out = forward(self._step_params(params, step), qx)
            loss = self._task_losses(out, qy) if batched else self._task_loss(out, qy)
            total = total + (loss if weights is None else weights[step] * loss)
        return total, out

    def _episode_loss(self, ep: Episode, create_graph: bool):
        start = self._start(ep.way, detach=False)
        forward, sx, qx, params = self._task_model(ep.support_x, ep.query_x, start, detach=False)
        return self._multi_step(forward, params, sx, ep.support_y, qx, ep.query_y, create_graph, batched=False)

    def _chunk_loss(self, chunk: Sequence[Episode], create_graph: bool):
        start = self._stack(self._start(chunk[0].way, detach=False), len(chunk))
        forward, sx, qx, params = self._batched_task_model(torch.stack([ep.support_x for ep in chunk]),
                                                           torch.stack([ep.query_x for ep in chunk]), start,
                                                           detach=False)
        return self._multi_step(forward, params, sx, torch.stack([ep.support_y for ep in chunk]), qx,
                                torch.stack([ep.query_y for ep in chunk]), create_graph, batched=True)

    def loss(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, dict[str, float]]:
        """MAML's :meth:`~fewshot.methods.maml.MAML.loss` with the multi-step objective; a
        training call (with gradients, in train mode) advances ``iteration``."""
        training = torch.is_grad_enabled() and self.training
        self._observing = training and bool(self._bn_layers)
        self._gathered = {}
        try:
            result = super().loss(episodes)
        finally:
            self._observing, self._step = False, None
        if training:
            self._update_statistics()
            self.iteration += 1
        return result

    def _predictor(self, fast: dict) -> AdaptedPredictor:
        last = max(self._test_steps() - 1, 0)
        return AdaptedPredictor(self, {n: t.detach() for n, t in self._step_params(fast, last).items()})

    def adapt(self, support_x, support_y, way):
        self._observing, self._evaluating = False, True  # evaluation gathers no statistics
        try:
            return super().adapt(support_x, support_y, way)
        finally:
            self._evaluating = False

    def _task_model(self, support_x, query_x, params, detach):
        forward, sx, qx, params = super()._task_model(support_x, query_x, params, detach)
        if detach and self.test_batch_norm == "per_step":
            # Evaluation passes normalise with step s's running statistics (in params).
            forward = self._fmodel_running
        if not self._observing or not self._bn_layers:
            return forward, sx, qx, params
        plain = forward

        def observed(p, x, twice=False):
            # The per-task path: each BatchNorm layer's input, one task per pass, seen
            # through hooks that live for this pass only (the module is left as it was).
            handles = [layer.register_forward_pre_hook(lambda m, inputs, i=i: self._record(i, inputs[0], 1))
                       for i, (_, layer) in enumerate(self._bn_layers)]
            try:
                return plain(p, x, twice)
            finally:
                for handle in handles:
                    handle.remove()

        return observed, sx, qx, params


__all__ = ["MAMLpp", "msl_weights"]
