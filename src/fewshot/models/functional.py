"""Functional forward passes of any unmodified ``nn.Module``, for gradient-based inner loops.

MAML and its family evaluate one network under many parameter sets: the shared
initialisation and every task's adapted ("fast") weights. :func:`functional_forward`
runs a module as it is, with the tensors of a ``{name: tensor}`` dictionary in place of
its own parameters (``torch.func.functional_call``), so no layer needs a "meta"
rewrite and a pre-trained backbone works as it comes.

Normalisation layers are handled explicitly, since their buffers are state that a
functional pass must not silently mutate:

* ``batch_norm="task"`` (the default): every pass normalises with the statistics of its
  own batch, i.e. of one task's support set or one task's query set, in training and at
  test time alike. Running statistics are neither used nor updated (the layers see
  ``None`` for them). This is the convention of Finn et al.'s reference code and of
  most MAML implementations.
* ``batch_norm="running"``: the layers run in eval mode on their stored running
  statistics (those of a pre-trained backbone), which stay frozen.

Other buffers are passed through untouched. Which layers count: every subclass of
``torch.nn.modules.batchnorm._NormBase`` (BatchNorm*, InstanceNorm*, SyncBatchNorm).

Passes that will be differentiated twice (``twice=True``) run batch-statistics BatchNorm
and convolutions of the images through the kernels of :mod:`fewshot.models.second_order`.

Memory layout is kept too: one-channel images get channels-last strides when the
module's weights are channels-last (:meth:`FunctionalModule._input`); otherwise a
channels-last network such as fewshot's Conv-4 silently runs its first block
channels-first under fast weights, two to ten times slower for BatchNorm and pooling.

Related modules: :mod:`fewshot.models.task_batched` runs many tasks at once, each under
its own weights; :mod:`fewshot.models.inner_loop` forms fast weights and the surrogate
loss that hands a meta-gradient to the trainer. The allocator setting that saves the page faults of re-allocating large
activations on every task is the runtime's (:func:`fewshot.runtime.keep_freed_memory`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _NormBase

from ..errors import ConfigError
from .second_order import SecondOrderKernels, channels_last

BATCH_NORM_MODES = ("task", "running")


def norm_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every normalisation layer with running statistics in ``module``."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, _NormBase)]


def norm_buffer_names(module: nn.Module) -> list[str]:
    """Names (relative to ``module``) of the running-statistics buffers of its norm layers."""
    names = []
    for prefix, layer in norm_layers(module):
        for buffer, value in layer.named_buffers(recurse=False):
            if value is not None:
                names.append(f"{prefix}.{buffer}" if prefix else buffer)
    return names


@contextlib.contextmanager
def _frozen_norms(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Norm layers in eval mode for the duration (their running statistics are used, not updated)."""
    states = [layer.training for layer in layers]
    try:
        for layer in layers:
            layer.training = False
        yield
    finally:
        for layer, state in zip(layers, states):
            layer.training = state


def check_batch_norm(mode: str) -> str:
    if mode not in BATCH_NORM_MODES:
        raise ConfigError(f"unknown batch_norm mode '{mode}'; choose one of: {', '.join(BATCH_NORM_MODES)}")
    return mode


class FunctionalModule:
    """Calls ``module`` with substituted parameters: ``fm(params, x)``.

    ``params`` maps parameter names (as in ``module.named_parameters()``) to tensors;
    parameters it leaves out are the module's own. Normalisation layers follow
    ``batch_norm`` (see the module docstring). ``twice=True`` says the pass will be
    differentiated twice (a second-order inner step), which routes BatchNorm through
    :func:`batch_norm_train` and convolutions of the images through
    :func:`conv_fixed_input`. The module itself is never modified.
    """

    def __init__(self, module: nn.Module, batch_norm: str = "task"):
        self.module = module
        self.batch_norm = check_batch_norm(batch_norm)
        self._none = {name: None for name in norm_buffer_names(module)}
        self._norms = [layer for _, layer in norm_layers(module)]
        self._channels_last = any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(
            memory_format=torch.channels_last) for p in module.parameters())

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the module's channels-last layout, if its weights use it."""
        return channels_last(x) if self._channels_last and x.dim() == 4 else x

    def __call__(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, twice: bool = False) -> torch.Tensor:
        x = self._input(x)
        if self.batch_norm == "task":
            tensors = (dict(params), self._none) if self._none else dict(params)
            if twice and torch.is_grad_enabled():
                with SecondOrderKernels():
                    return functional_call(self.module, tensors, (x,))
            return functional_call(self.module, tensors, (x,))
        with _frozen_norms(self._norms):
            return functional_call(self.module, dict(params), (x,))


def functional_forward(module: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                       batch_norm: str = "task") -> torch.Tensor:
    """One pass of ``module`` on ``x`` with ``params`` substituted (see :class:`FunctionalModule`)."""
    return FunctionalModule(module, batch_norm)(params, x)


__all__ = ["BATCH_NORM_MODES", "FunctionalModule", "check_batch_norm", "functional_forward",
           "norm_buffer_names", "norm_layers"]
