"""Reptile (Nichol, Achiam and Schulman, "On First-Order Meta-Learning Algorithms", 2018).

For each task of a meta-batch, Reptile runs ``inner_steps`` plain SGD steps from the
shared weights θ and moves θ toward the mean of the adapted weights φ̃:

    θ ← θ + ε (mean_i φ̃_i − θ)

No gradient flows through the inner loop. To run on the one shared trainer,
:meth:`Reptile.loss` returns a surrogate scalar whose gradient with respect to θ is
``θ − mean_i φ̃_i`` (:func:`~fewshot.models.inner_loop.surrogate_loss`): the
trainer's optimiser step then *is* the Reptile update. With plain SGD without momentum
at learning rate ε it is exactly the formula above; with the trainer's default Adam it
is Reptile with an Adam outer step (Nichol et al. discuss both).

As in Reptile's own Omniglot runs, which meta-train with more shots than they test
with, the inner loop of meta-training uses all of an episode's examples, support and
query (``use_query=True``; ``False`` uses the support set alone). The reported loss
and accuracy are those of the adapted weights on the query set. Evaluation adapts on
the support set with ``test_inner_steps`` steps (Nichol et al. used 50 on Omniglot).

The inner optimiser is plain SGD (Nichol et al. used Adam in the inner loop for
Omniglot); ``momentum`` μ > 0 adds heavy-ball momentum, exactly as
``torch.optim.SGD(momentum=μ)``, in meta-training and at test time alike. For exactly
the update above, train with ``--optimizer sgd --momentum 0``: the trainer's outer SGD
otherwise has momentum 0.9.

The model, the head (sliced for fewer ways) and BatchNorm (per-task batch
statistics) are as in :class:`~fewshot.methods.maml.MAML`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..data.episodes import Episode
from ..errors import ConfigError
from ..models.inner_loop import surrogate_loss
from ..models.task_batched import Unbatchable
from ..params import Boolean, Real
from .base import register
from .maml import DEFAULT_INNER_LR, MAML, OPTIONS

# Reptile's inner rate when none is given: 0.1 for classification, MAML's for regression.
INNER_LR = {"classification": 0.1, "regression": DEFAULT_INNER_LR["regression"]}


@register
class Reptile(MAML):
    """Reptile. Options: ``way``, ``inner_steps`` (default 5), ``inner_lr`` (SGD, default
    0.1, or for regression MAML's 0.01), ``momentum`` (of the inner SGD, default 0), ``test_inner_steps``, ``use_query``,
    ``task``, ``image_shape`` / ``in_features``, ``batch_norm``,
    ``task_batching``, ``task_chunk`` (as for :class:`~fewshot.methods.maml.MAML`; the
    tasks of a meta-batch adapt as one task-batched computation)."""

    name = "reptile"
    default_first_order = True
    _parameter_constraints = {**{k: c for k, c in OPTIONS.items() if k not in ("first_order", "learn_inner_lr", "boil")},
                              "use_query": Boolean(), "momentum": Real(low=0, high=1, open_high=True)}

    def __init__(self, backbone: nn.Module, way: int = 5, inner_steps: int = 5, inner_lr: float | None = None,
                 momentum: float = 0.0, test_inner_steps: int | None = None, use_query: bool = True,
                 task: str = "classification", image_shape: Sequence[int] | None = None,
                 in_features: int | None = None, batch_norm: str = "task", task_batching: bool = True,
                 task_chunk: int | None = None):
        if inner_lr is None:
            inner_lr = INNER_LR.get(task, INNER_LR["classification"])
        super().__init__(backbone, way=way, inner_steps=inner_steps, inner_lr=inner_lr,
                         test_inner_steps=test_inner_steps, task=task, image_shape=image_shape,
                         in_features=in_features, batch_norm=batch_norm, task_batching=task_batching, task_chunk=task_chunk)
        self.use_query = use_query
        self.inner_momentum = float(momentum)

    def loss(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean post-adaptation query loss; its gradient is ``θ − mean φ̃`` (see the module docstring)."""
        if not episodes:
            raise ConfigError("reptile.loss needs at least one episode")
        try:
            return self._reptile_loss(episodes)
        except Unbatchable as e:  # as in MAML.loss: this model runs task by task from now on
            self._batched, self.unbatched_reason = None, str(e)
            return self._reptile_loss(episodes)

    def _reptile_loss(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, dict[str, float]]:
        params = dict(self.named_parameters())
        names = self._adapted
        total = [torch.zeros_like(params[n]) for n in names]
        values, metrics = [], []
        batched = self._batched_model() is not None
        for chunk in (self._chunks(episodes) if batched else [[ep] for ep in episodes]):
            together = len(chunk) > 1  # a chunk of one task runs the per-task loop
            if self.use_query:
                x = [torch.cat([ep.support_x, ep.query_x]) for ep in chunk]
                y = [torch.cat([ep.support_y, ep.query_y]) for ep in chunk]
            else:
                x, y = [ep.support_x for ep in chunk], [ep.support_y for ep in chunk]
            start = self._start(chunk[0].way, detach=True)
            with torch.enable_grad():
                if together:  # every task of the chunk at once (TaskBatched), as MAML
                    fast = self._inner_loop(self._batched, self._stack(start, len(chunk)), torch.stack(x),
                                            torch.stack(y), self.inner_steps, create_graph=False, detach=True,
                                            test=False, batched=True)
                else:
                    fast = self._inner_loop(self._fmodel, start, x[0], y[0], self.inner_steps, create_graph=False,
                                            detach=True, test=False)
            with torch.no_grad():
                if together:
                    out = self._batched(fast, torch.stack([ep.query_x for ep in chunk]))
                    values.append(self._task_losses(out, torch.stack([ep.query_y for ep in chunk])))
                else:
                    out = self._fmodel(fast, chunk[0].query_x).unsqueeze(0)
                    values.append(self._task_loss(out[0], chunk[0].query_y).unsqueeze(0))
                metrics += [self._metric(o, ep.query_y) for o, ep in zip(out, chunk)]
                for acc, name in zip(total, names):
                    # Σ_t (θ − φ̃_t) over the chunk (rows of a sliced head only).
                    delta = (start[name] * len(chunk) - (fast[name].sum(0) if together else fast[name]))
                    target = acc if delta.shape == acc.shape else acc[: delta.shape[0]]
                    target.add_(delta, alpha=1.0 / len(episodes))
        value = torch.cat(values).mean()
        summary = self._summary(metrics)
        if not torch.is_grad_enabled():
            return value, summary
        return surrogate_loss(value, [params[n] for n in names], total), summary


__all__ = ["Reptile"]
