"""The task-batched path of the MAML family: the tasks of a meta-batch as one batched
computation.

**Task batching.** Meta-training runs the tasks of a meta-batch together
(:class:`~fewshot.models.task_batched.TaskBatched`): the tasks' fast weights are stacked
``(T, ...)``, their images laid side by side along the channels, every ``Conv2d`` one
grouped convolution over tasks, every ``Linear`` one batched product, BatchNorm with
each task's own statistics. One inner step of T tasks is one pass of a few large
operations instead of T passes of small ones, which is what fills a GPU; the losses and
meta-gradients equal the per-task loop's to float rounding (``tests/test_maml_batched.py``).
A module with a layer the batched path does not know (``unbatched_reason`` names it)
runs the per-task loop instead, so any ``nn.Module`` still works; ``task_batching=False``
asks for the per-task loop.

**Chunks.** The tasks that can run together (same shapes) are cut into chunks of at
most ``task_chunk`` tasks (:meth:`TaskBatching._chunks`), by default
:meth:`TaskBatching._auto_chunk`'s size: cache-sized on a CPU, where large chunks
measured slower than single tasks, and bounded in memory elsewhere. A chunk of one
task runs the per-task path (:mod:`.per_task`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ...data.episodes import Episode
from ...models.task_batched import TaskBatched
from ...taskkind import task_kind
from .adaptation import Forward


class TaskBatching:
    """The task-batched path of :class:`~fewshot.methods.maml.MAML`, a mixin of it: it
    reads the method's ``task``, ``task_batching``, ``task_chunk``, ``batch_norm``,
    ``inner_steps``, ``backbone`` and ``head``, keeps the batched model in ``_batched``
    (or why there is none in ``unbatched_reason``), and runs its inner loop
    (:class:`~fewshot.methods.maml.adaptation.Adaptation`)."""

    def _task_losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each task's loss, ``(T,)``, from task-batched outputs ``(T, N, ...)`` and targets ``(T, N)``."""
        return task_kind(self.task).task_losses(out, y)

    def _stages(self) -> list[tuple[str, nn.Module]]:
        """The predictor as :class:`~fewshot.models.task_batched.TaskBatched` stages."""
        return [("backbone.", self.backbone)] + ([("head.", self.head)] if self.head is not None else [])

    def _batched_model(self) -> TaskBatched | None:
        """The task-batched predictor, or None when the modules hold a layer it does not
        know (``unbatched_reason`` then says which) or ``task_batching`` is off."""
        if not self.task_batching:
            return None
        if self._batched is None and self.unbatched_reason is None:
            batched = TaskBatched(self._stages(), self.batch_norm)
            if batched.supported:
                self._batched = batched
            else:
                self.unbatched_reason = batched.reason
        return self._batched

    def _batched_task_model(self, support_x: torch.Tensor, query_x: torch.Tensor | None, params: dict,
                            detach: bool) -> tuple[Forward, torch.Tensor, torch.Tensor | None, dict]:
        """:meth:`_task_model` for ``T`` tasks at once: inputs ``(T, N, ...)``, params ``(T, ...)``."""
        return self._batched, support_x, query_x, params

    def _chunks(self, episodes: Sequence[Episode]) -> list[list[Episode]]:
        """Episodes in groups that run as one task-batched computation.

        Tasks batch when their support and query sets have the same shapes (a
        meta-batch always does); a group holds at most ``task_chunk`` tasks, by default
        :meth:`_auto_chunk`. A group of one task runs the per-task loop.
        """
        groups: dict[tuple, list[Episode]] = {}
        for ep in episodes:
            key = (tuple(ep.support_x.shape), None if ep.query_x is None else tuple(ep.query_x.shape), ep.way,
                   ep.support_x.dtype, ep.support_x.device)
            groups.setdefault(key, []).append(ep)
        chunks = []
        for group in groups.values():
            size = self.task_chunk or self._auto_chunk(group[0])
            chunks += [group[i: i + size] for i in range(0, len(group), size)]
        return chunks

    def _auto_chunk(self, ep: Episode) -> int:
        """How many tasks like ``ep`` run at once by default.

        On a CPU, batching pays only while a chunk's activations stay in cache: laid
        side by side, 32 Omniglot tasks with 15 queries per class ran 2x slower than
        one by one (``benchmarks/results/maml_speed_chunks_v1.json``, with the earlier
        channels-first layout). A chunk there holds at most 2^15 input values per
        pass: 8 Omniglot 5-way tasks with one query per class, 2 20-way ones, and a
        task with 15 queries per class runs alone (the per-task loop). On
        other devices (a GPU, which batching is for) the bound is on the chunk's graph
        (every inner step's activations live until its meta-gradient is taken): at
        most 2^22 input values x inner steps, about 14 GB for Conv-4 (3.5 KB of saved
        activations per input value and step, measured on CPU).
        """
        largest = max(ep.support_x.numel(), 0 if ep.query_x is None else ep.query_x.numel())
        if ep.support_x.device.type == "cpu":
            return max(1, (1 << 15) // max(1, largest))
        values = ep.support_x.numel() + (0 if ep.query_x is None else ep.query_x.numel())
        return max(1, (1 << 22) // max(1, values * max(1, self.inner_steps)))

    @staticmethod
    def _stack(params: dict, tasks: int) -> dict[str, torch.Tensor]:
        """Every task starts from the same weights: ``(T, ...)`` views of one tensor."""
        return {n: p.unsqueeze(0).expand(tasks, *p.shape) for n, p in params.items()}

    def _chunk_loss(self, chunk: Sequence[Episode], create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Each task's query loss ``(T,)`` (with its graph) and query outputs ``(T, M, ...)``
        after the inner loop, for the tasks of ``chunk`` at once."""
        tasks = len(chunk)
        start = self._stack(self._start(chunk[0].way, detach=False), tasks)
        sy = torch.stack([ep.support_y for ep in chunk])
        qy = torch.stack([ep.query_y for ep in chunk])
        forward, sx, qx, params = self._batched_task_model(torch.stack([ep.support_x for ep in chunk]),
                                                           torch.stack([ep.query_x for ep in chunk]), start,
                                                           detach=False)
        fast = self._inner_loop(forward, params, sx, sy, self.inner_steps, create_graph, detach=False, batched=True)
        out = forward(self._step_params(fast, max(self.inner_steps - 1, 0)), qx)
        return self._task_losses(out, qy), out


__all__ = ["TaskBatching"]
