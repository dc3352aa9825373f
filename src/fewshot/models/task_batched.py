"""Task-batched passes: one module run for many tasks at once, each under its own weights.

:class:`TaskBatched` lays the tasks side by side along the channels (grouped
convolutions over tasks, batched matrix products, per-task BatchNorm statistics), for
the layers it knows; :func:`unbatchable_layer` says when a module holds one it does not,
and the methods then use :class:`~fewshot.models.functional.FunctionalModule` task by
task. On CPU it lays image activations out channels-last: PyTorch's channels-first
max-pooling and BatchNorm kernels are several times slower at these shapes (hundreds of
channels, a handful of images), and the grouped convolutions are not. A first layer,
whose input (the images) needs no gradient, runs through
:func:`~fewshot.models.second_order.conv_fixed_input`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .functional import check_batch_norm
from .second_order import batch_norm_train, channels_last, conv_fixed_input

class Unbatchable(Exception):
    """A layer, or a use of one, that :class:`TaskBatched` does not know; the caller falls
    back to the per-task loop."""


# Parameterless layers that act on each channel (or element) separately: a task-packed
# tensor goes through them unchanged. Exact types only: a subclass may override forward.
_PER_CHANNEL = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
                nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Identity, nn.Dropout,
                nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_CONVS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _sequential(run, module, prefix, x):
    for name, child in module.named_children():
        x = run(child, f"{prefix}{name}.", x)
    return x


def _residual_block(run, module, prefix, x):
    return run(module.out, prefix + "out.", run(module.body, prefix + "body.", x) +
               run(module.shortcut, prefix + "shortcut.", x))


def _composites() -> dict[type, object]:
    """Containers whose ``forward`` is known: how to run them on a task-packed tensor."""
    from .backbones import Conv4, ResidualBlock  # Conv4.forward only sets the memory layout

    return {nn.Sequential: _sequential, Conv4: _sequential, ResidualBlock: _residual_block}


def _composite(module: nn.Module):
    table = _composites()
    if type(module) in table:
        return table[type(module)]
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        return _sequential
    return None


def unbatchable_layer(module: nn.Module, prefix: str = "") -> str | None:
    """Why :class:`TaskBatched` cannot run ``module`` (the first unknown layer), or None."""
    kind = type(module)
    if _composite(module) is not None:
        for name, child in module.named_children():
            reason = unbatchable_layer(child, f"{prefix}{name}.")
            if reason:
                return reason
        return None
    where = f"{prefix.rstrip('.') or 'the module'} ({kind.__name__})"
    if kind in _PER_CHANNEL:
        if any(True for _ in module.parameters()) or getattr(module, "return_indices", False):
            return f"{where} has parameters or returns indices"
        return None
    if kind in _CONVS:
        return None if module.padding_mode == "zeros" else f"{where} pads with '{module.padding_mode}'"
    if kind is nn.Linear or kind in _NORMS:
        return None
    if kind is nn.Flatten:
        return None if module.start_dim == 1 and module.end_dim == -1 else f"{where} flattens other dimensions"
    return f"{where} is not a layer the task-batched path knows"


class TaskBatched:
    """Runs ``stages`` (``[(name prefix, module), ...]``, applied in order) on T tasks at once.

    A call ``tb(params, x)`` takes each task's own weights, ``params[name]`` of shape
    ``(T, *parameter shape)`` (names as in the modules' ``named_parameters()`` after the
    prefix; a missing name is the module's own parameter, shared by all tasks), and
    inputs ``x`` of shape ``(T, N, *input)``, and returns ``(T, N, *output)``: task t's
    output is that of the module under task t's weights on task t's inputs, exactly as
    a per-task loop over :class:`FunctionalModule` would compute it. An entry of a
    parameter's own shape is shared by all tasks.

    The tasks are laid side by side along the channels: an activation is one tensor
    ``(N, T·C, ...)``, so that a ``Conv1d``/``Conv2d`` is one grouped convolution (groups
    = tasks × its own groups) with the tasks' weights stacked, ``BatchNorm`` with batch
    statistics computes them per channel, i.e. per task and channel, and pooling and
    activations act on each channel as they are. ``Linear`` is one batched matrix product
    (``baddbmm``) over tasks, ``Flatten`` keeps each task's features contiguous. One
    pass of T tasks costs one set of kernel launches instead of T, which on a CPU saves
    the per-operation overhead of small tasks and on a GPU is what fills the device.

    Known: ``nn.Sequential`` (and subclasses that keep its ``forward``), fewshot's
    ``Conv4`` and ``ResidualBlock``, ``Conv1d``/``Conv2d`` (zero padding), ``Linear`` on
    2-d input, ``BatchNorm1d``/``2d``, ``Flatten()``, and parameterless per-channel
    layers (activations, dropout, pooling). :func:`unbatchable_layer` names the first
    layer of a module outside this set; the methods then run their per-task loop.
    ``batch_norm`` is as for :class:`FunctionalModule`; ``twice`` routes batch-statistics
    BatchNorm through :func:`batch_norm_train`; ``observe(prefix, layer, x)`` is called
    with each BatchNorm layer's task-packed input (MAML++ gathers per-step statistics).
    Everything follows the device and dtype of the inputs and parameters.
    """

    def __init__(self, stages: Sequence[tuple[str, nn.Module]], batch_norm: str = "task"):
        self.stages = list(stages)
        self.batch_norm = check_batch_norm(batch_norm)
        self.reason = next((r for prefix, m in self.stages if (r := unbatchable_layer(m, prefix))), None)

    @property
    def supported(self) -> bool:
        return self.reason is None

    def __call__(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, twice: bool = False,
                 observe=None) -> torch.Tensor:
        if self.reason is not None:
            raise Unbatchable(self.reason)
        tasks, n = x.shape[0], x.shape[1]
        twice = twice and torch.is_grad_enabled()

        def weight(prefix: str, name: str, own: torch.Tensor | None) -> torch.Tensor | None:
            full = prefix + name
            given = params.get(full, own)
            if given is None:
                return None
            if own is not None and given.dim() == own.dim():  # one tensor for every task
                given = given.unsqueeze(0).expand(tasks, *given.shape)
            return given

        def run(module: nn.Module, prefix: str, h: torch.Tensor) -> torch.Tensor:
            kind = type(module)
            composite = _composite(module)
            if composite is not None:
                return composite(run, module, prefix, h)
            if kind in _PER_CHANNEL or kind is nn.Flatten:
                return module(h)
            if kind in _CONVS:
                w = weight(prefix, "weight", module.weight)
                b = weight(prefix, "bias", module.bias)
                w = w.reshape(tasks * w.shape[1], *w.shape[2:])
                if layout_cl:
                    w = channels_last(w)
                b = None if b is None else b.reshape(-1)
                conv = (w, b, module.stride, module.padding, module.dilation, module.groups * tasks)
                if grad and not h.requires_grad and not isinstance(module.padding, str):
                    return conv_fixed_input(h, *conv)
                return _CONVS[kind](h, *conv)
            if kind is nn.Linear:
                if h.dim() != 2:
                    raise Unbatchable(f"{prefix.rstrip('.')} (Linear) gets {h.dim()}-d input")
                w = weight(prefix, "weight", module.weight)
                b = weight(prefix, "bias", module.bias)
                ht = h.view(n, tasks, -1).transpose(0, 1)
                out = torch.bmm(ht, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), ht,
                                                                                          w.transpose(1, 2))
                return out.transpose(0, 1).reshape(n, -1)
            if kind in _NORMS:
                if observe is not None:
                    observe(prefix, module, h)
                w = weight(prefix, "weight", module.weight)
                b = weight(prefix, "bias", module.bias)
                w = None if w is None else w.reshape(-1)
                b = None if b is None else b.reshape(-1)
                mean = params.get(prefix + "running_mean", module.running_mean)
                var = params.get(prefix + "running_var", module.running_var)
                if self.batch_norm == "running" and mean is not None and var is not None:
                    mean = mean.reshape(-1) if mean.dim() == 2 else mean.repeat(tasks)
                    var = var.reshape(-1) if var.dim() == 2 else var.repeat(tasks)
                    return F.batch_norm(h, mean, var, w, b, False, 0.0, module.eps)
                if twice:
                    return batch_norm_train(h, w, b, module.eps)
                return F.batch_norm(h, None, None, w, b, True, 0.0, module.eps)
            raise Unbatchable(f"{prefix.rstrip('.')} ({kind.__name__})")

        if x.dim() < 3:
            raise Unbatchable(f"task-batched input must be (tasks, batch, ...), got shape {tuple(x.shape)}")
        h = x.transpose(0, 1).reshape(n, tasks * x.shape[2], *x.shape[3:])  # (N, T·C, ...)
        grad = torch.is_grad_enabled()
        layout_cl = h.dim() == 4 and h.device.type == "cpu"
        if layout_cl:
            h = channels_last(h)
        for prefix, module in self.stages:
            h = run(module, prefix, h)
        return h.unflatten(1, (tasks, h.shape[1] // tasks)).transpose(0, 1)


def pack_tasks(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(T, ...)`` stack of per-task tensors of one shape (support or query sets)."""
    return torch.stack(list(tensors))


__all__ = ["TaskBatched", "Unbatchable", "pack_tasks", "unbatchable_layer"]
