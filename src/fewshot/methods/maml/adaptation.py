"""What both paths of the MAML family share: a task's start weights, the inner
learning rates and the inner loop.

The inner loop (:meth:`Adaptation._inner_loop`) takes gradient steps on a task's
support set from its start weights (:meth:`Adaptation._start`: the meta-learned ones,
the head sliced to the task's way), for one task (:mod:`.per_task`) or for the tasks of
a chunk at once, their weights stacked ``(T, ...)`` (:mod:`.batched`). Its rates are
``inner_lr``, or learned per inner step and parameter tensor (``learn_inner_lr``, the
"LSLR" of MAML++, Antoniou et al. 2019, arXiv:1810.09502), or learned per element
(Meta-SGD, arXiv:1707.09835, which overrides :meth:`Adaptation._lrs`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ... import budget
from ...errors import ConfigError
from ...models.inner_loop import sgd_step

Forward = Callable[..., torch.Tensor]  # (params, x[, twice]) -> outputs


def batched_sgd_step(params: dict, names: Sequence[str], grads: Sequence[torch.Tensor],
                     lrs: Sequence[torch.Tensor | float]) -> dict[str, torch.Tensor]:
    """:func:`~fewshot.models.inner_loop.sgd_step` for task-stacked weights ``(T, ...)``:
    a rate (scalar, or per element as Meta-SGD's) applies to every task alike."""
    out = dict(params)
    for name, grad, lr in zip(names, grads, lrs):
        if torch.is_tensor(lr) and lr.dim() and lr.shape[0] != grad.shape[1]:
            lr = lr[: grad.shape[1]]  # a head sliced to fewer ways: its per-element rates too
        out[name] = params[name] - lr * grad
    return out


class Adaptation:
    """The adaptation pieces of :class:`~fewshot.methods.maml.MAML`, a mixin of it: they
    read the method's ``inner_lr``, ``inner_steps``, ``learn_inner_lr``,
    ``test_inner_steps`` (and ``_test_lr``), ``inner_momentum``, ``head`` and
    ``_adapted``, and its task losses (:mod:`.per_task`, :mod:`.batched`)."""

    # -- the inner learning rates --------------------------------------------------------

    def _init_learned_rates(self) -> None:
        self.step_lrs = None
        if self.learn_inner_lr:
            # One rate per inner step and parameter tensor (MAML++'s LSLR).
            self.step_lrs = nn.Parameter(torch.full((max(self.inner_steps, 1), len(self._adapted)), self.inner_lr))

    def _lrs(self, step: int, detach: bool, test: bool = False) -> list[torch.Tensor | float]:
        """The inner learning rate of each adapted tensor at ``step`` (``test``: at test time)."""
        if self.step_lrs is None:
            lr = self._test_lr if test and self._test_lr is not None else self.inner_lr
            return [lr] * len(self._adapted)
        row = self.step_lrs[min(step, self.step_lrs.shape[0] - 1)]
        row = row.detach() if detach else row
        return list(row.unbind(0))

    def _learns_rates(self) -> bool:
        return self.step_lrs is not None

    # -- the start and the steps ---------------------------------------------------------

    def _start(self, way: int, detach: bool) -> dict[str, torch.Tensor]:
        """The initial weights of the predictor for a ``way``-way task (the head sliced to ``way`` rows)."""
        params = {n: p for n, p in self.named_parameters() if n.startswith(("backbone.", "head."))}
        if self.head is not None:
            rows = self.head.out_features
            if way > rows:
                raise ConfigError(f"{self.name} was trained for {rows}-way tasks; its head cannot adapt to {way} "
                                  f"classes (train with --way {way}, or -o way={way})")
            if way < rows:
                params["head.weight"], params["head.bias"] = params["head.weight"][:way], params["head.bias"][:way]
        if detach:
            params = {n: p.detach() for n, p in params.items()}
        return params

    def _inner_loop(self, forward: Forward, params: dict, x: torch.Tensor, y: torch.Tensor, steps: int,
                    create_graph: bool, detach: bool, test: bool | None = None, batched: bool = False,
                    first_step: int = 0) -> dict:
        """``steps`` gradient steps on ``(x, y)`` from ``params``.

        ``create_graph`` keeps the graph of the steps (second-order meta-gradient);
        ``detach`` (evaluation) restarts every step from detached leaves, so no graph
        outlives a step. ``test`` (default: ``detach``) applies a test-time ``inner_lr``.
        With ``inner_momentum`` μ > 0 a step follows the velocity ``v ← μ v + g``
        (``v = g`` at the first step), exactly as ``torch.optim.SGD(momentum=μ)``.
        ``batched``: ``forward`` is task-batched, ``x`` is ``(T, N, ...)``, ``y``
        ``(T, N)``, every params entry ``(T, ...)``; the step minimises the sum of the
        tasks' losses, whose gradient with respect to task t's weights is task t's own.
        ``first_step`` numbers the steps (their learned rates; MAML++'s per-step state).
        Before each step the CPU budget of a training step is checked
        (:func:`fewshot.budget.check`: :class:`~fewshot.budget.OutOfBudget` once spent).
        """
        names = self._adapted
        test = detach if test is None else test
        velocity = None
        for step in range(first_step, first_step + steps):
            budget.check()
            if detach:
                params = {n: (p.detach().requires_grad_(True) if n in names else p) for n, p in params.items()}
            at_step = self._step_params(params, step)
            out = forward(at_step, x, create_graph) if create_graph else forward(at_step, x)
            loss = self._task_losses(out, y).sum() if batched else self._task_loss(out, y)
            grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
                if self.inner_momentum:
                    velocity = list(grads) if velocity is None else [
                        v * self.inner_momentum + g for v, g in zip(velocity, grads)]
                    grads = velocity
                lrs = self._lrs(step, detach, test)
                new = batched_sgd_step(params, names, grads, lrs) if batched else sgd_step(params, names, grads, lrs)
            params = new
        if detach:
            params = {n: p.detach() for n, p in params.items()}
        return params

    def _step_params(self, params: dict, step: int) -> dict:
        """The weights a pass at inner step ``step`` runs with (MAML++ adds per-step BatchNorm weights)."""
        return params

    def _test_steps(self) -> int:
        return self.inner_steps if self.test_inner_steps is None else self.test_inner_steps


__all__ = ["Adaptation", "Forward", "batched_sgd_step"]
