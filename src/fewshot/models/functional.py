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

Second-order inner loops differentiate BatchNorm twice, and PyTorch's generic double
backward of BatchNorm is a composite of some thirty full-size operations, about a
fifth of a 5-step second-order MAML iteration on CPU. Passes that will be differentiated
twice (``twice=True``) therefore run batch-statistics BatchNorm through
:func:`batch_norm_train`, whose forward and first backward are PyTorch's own kernels and
whose double backward is written out in closed form (about 3x faster; equal to
PyTorch's to float64 rounding, see ``tests/test_maml.py``), and convolutions of inputs
that need no gradient (the images) through :func:`conv_fixed_input`, which skips the
image gradient PyTorch's double backward would compute. The module is still not
modified: the ``F.batch_norm`` and ``F.conv*d`` calls it makes are intercepted for the
duration of the pass (a ``TorchFunctionMode``).

Memory layout is kept too: fast weights ``θ - α g`` are laid out like θ (:func:`like`)
and one-channel images get channels-last strides when the module's weights are
channels-last (:meth:`FunctionalModule._input`); otherwise a channels-last network such
as fewshot's Conv-4 silently runs its first block channels-first under fast weights,
two to ten times slower for BatchNorm and pooling.

:class:`TaskBatched` runs a module for many tasks at once, each under its own weights
(grouped convolutions over tasks, batched matrix products, per-task BatchNorm
statistics), for the layers it knows; :func:`unbatchable_layer` says when a module holds
one it does not, and the methods then use :class:`FunctionalModule` task by task. On
CPU it lays image activations out channels-last: PyTorch's channels-first max-pooling
and BatchNorm kernels are several times slower at these shapes (hundreds of channels,
a handful of images), and the grouped convolutions are not. A first layer, whose input
(the images) needs no gradient, runs through :func:`conv_fixed_input`.

The helpers below also give :func:`surrogate_loss`, the scalar that lets a method hand
the shared trainer a meta-gradient it computed itself (task by task, so the graphs of a
meta-batch never all live at once). The allocator setting that saves the page faults of
re-allocating large activations on every task is the runtime's
(:func:`fewshot.runtime.keep_freed_memory`).
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call
from torch.nn.modules.batchnorm import _NormBase
from torch.overrides import TorchFunctionMode

from ..errors import ConfigError

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


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """A 4-d tensor with channels-last strides (a view when it already has them, or has one channel).

    A one-channel tensor ``(n, 1, h, w)`` is contiguous in both layouts, and
    ``t.contiguous(memory_format=torch.channels_last)`` leaves its strides
    channels-first; convolutions then pick the layout from whatever else they are
    given, and a first layer's double backward comes out channels-first. Its strides
    are set explicitly instead (the same memory, a view).
    """
    if t.shape[1] == 1 and t.is_contiguous():
        return t.as_strided(t.shape, (t.stride(0), 1, t.stride(2), t.stride(3)), t.storage_offset())
    return t.contiguous(memory_format=torch.channels_last)


def _same_layout(reference: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t`` with ``reference``'s strides: one copy where they differ, since most CPU
    kernels given two layouts at once take a path several times slower."""
    return t if t.stride() == reference.stride() else torch.empty_like(reference).copy_(t)


# -- BatchNorm with a closed-form double backward --------------------------------------------


def _as_rows(t: torch.Tensor) -> torch.Tensor | None:
    """``(M, C)`` view of a channels-last (or 2-d) tensor, whose per-channel sums are column sums."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    if t.dim() == 2 and t.is_contiguous():
        return t
    return None


def _channel_sum(t: torch.Tensor) -> torch.Tensor:
    rows = _as_rows(t)
    return rows.sum(0) if rows is not None else t.sum([d for d in range(t.dim()) if d != 1])


def _channel_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ra, rb = _as_rows(a), _as_rows(b)
    if ra is not None and rb is not None:
        return (ra * rb).sum(0)
    return (a * b).sum([d for d in range(a.dim()) if d != 1])


def _per_channel(like: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return v.view([1, -1] + [1] * (like.dim() - 2))


class _BatchNormBackward(torch.autograd.Function):
    """BatchNorm's first backward (PyTorch's kernel), with a closed-form backward of its own.

    With x̂ = (x - μ) r, r = 1/sqrt(σ² + ε), P(v) = v - mean(v) - x̂ mean(v x̂) (per
    channel, over the M values of a channel), the first backward maps the output
    gradient g to ``dx = w r P(g)``, ``dw = Σ g x̂``, ``db = Σ g``. For upstream
    gradients (A, α, β) of (dx, dw, db), its gradients are
    ``G_g = w r P(A) + α x̂ + β``, ``G_w = r Σ A P(g)`` and
    ``G_x = -(w r² / M) (t x̂ + (Σ A x̂) P(g) + (Σ g x̂) P(A)) + α r P(g)`` with
    ``t = Σ A P(g)``.

    Second-order MAML spent a fifth of its time here, all of it memory-bound, so the
    code never forms x̂, P(g) or P(A): both results are per-channel linear combinations
    of the centred input x - μ, g and A (plus a per-channel constant), whose
    coefficients come from five per-channel sums. That is one pass to centre, five
    reductions and five passes to combine, against about twenty-five passes when each
    term is a tensor. Centring first keeps the sums as accurate as x̂'s were.
    """

    @staticmethod
    def forward(ctx, grad_out, x, weight, mean, rstd, eps):
        mask = [True, weight is not None, weight is not None]
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(grad_out, x, weight, None, None, mean, rstd, True,
                                                                eps, mask)
        ctx.save_for_backward(grad_out, x, weight, mean, rstd)
        return dx, dw, db

    @staticmethod
    @once_differentiable
    def backward(ctx, gdx, gdw, gdb):
        g, x, w, mean, r = ctx.saved_tensors
        if gdx is not None:
            gdx = _same_layout(x, gdx)  # one copy instead of a dozen slow mixed-layout operations
        m = x.numel() // x.shape[1]
        xc = x - _per_channel(x, mean)
        sg, sgx = _channel_sum(g), r * _channel_dot(g, xc)  # Σ g, Σ g x̂
        wr = r if w is None else w * r
        # P(g) = g + ag (x - μ) + bg, per channel.
        ag, bg = -r * sgx / m, -sg / m
        # G_x's coefficients of x - μ, of g and of A, and its constant; G_g's likewise.
        cpg = torch.zeros_like(r) if gdw is None else gdw * r
        cx, cg, c0 = cpg * ag, cpg, cpg * bg
        gx0, gg0 = torch.zeros_like(r), torch.zeros_like(r)
        if gdw is not None:
            gx0 = gdw * r  # G_g's α x̂ term
        if gdb is not None:
            gg0 = gdb
        grad_w = None if w is None else torch.zeros_like(w)
        if gdx is not None:
            sa, saxc, sag = _channel_sum(gdx), _channel_dot(gdx, xc), _channel_dot(gdx, g)
            sax = r * saxc  # Σ A x̂
            aa, ba = -r * sax / m, -sa / m  # P(A) = A + aa (x - μ) + ba
            t = sag + ag * saxc + bg * sa  # Σ A P(g)
            k = wr * r / m
            cpa = -k * sgx
            cx = cx - k * t * r - k * sax * ag + cpa * aa
            cg = cg - k * sax
            c0 = c0 - k * sax * bg + cpa * ba
            gx0 = gx0 + wr * aa
            gg0 = gg0 + wr * ba
            if w is not None:
                grad_w = r * t
        pc = partial(_per_channel, x)
        grad_g = torch.addcmul(pc(gg0), xc, pc(gx0))
        grad_x = torch.addcmul(pc(c0), xc, pc(cx)).addcmul_(g, pc(cg))
        if gdx is not None:
            grad_g.addcmul_(gdx, pc(wr))
            grad_x.addcmul_(gdx, pc(cpa))
        return grad_g, grad_x, grad_w, None, None, None


class _FixedInputConvWeightGrad(torch.autograd.Function):
    """A convolution's weight and bias gradients for an input that needs no gradient.

    Its backward is the convolution of that input with the incoming weight gradient
    (plus the bias term): the derivative of the weight gradient with respect to the
    output gradient. The weight gradient does not depend on the weight itself.
    """

    @staticmethod
    def forward(ctx, grad_out, x, weight, has_bias, stride, padding, dilation, groups):
        _, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, x, weight, [weight.shape[0]] if has_bias else None, stride, padding, dilation, False,
            [0] * len(stride), groups, [False, True, has_bias])
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups)
        return grad_w, grad_b

    @staticmethod
    def backward(ctx, gg_w, gg_b):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        if gg_w is None:
            gg_w = torch.zeros_like(weight)
        gg_out = torch.convolution(x, gg_w, gg_b, stride, padding, dilation, False, [0] * len(stride), groups)
        return gg_out, None, None, None, None, None, None, None


class _FixedInputConv(torch.autograd.Function):
    """A convolution whose backward gives the weight and bias gradients only (:func:`conv_fixed_input`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conv = (bias is not None, stride, padding, dilation, groups)
        return torch.convolution(x, weight, bias, stride, padding, dilation, False, [0] * len(stride), groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        has_bias, *conv = ctx.conv
        grad_w, grad_b = _FixedInputConvWeightGrad.apply(grad_out, x, weight, has_bias, *conv)
        return None, grad_w, grad_b if has_bias else None, None, None, None, None


def conv_fixed_input(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int],
                     padding: Sequence[int], dilation: Sequence[int], groups: int) -> torch.Tensor:
    """``torch.convolution`` (not transposed) of an input that needs no gradient, such as
    a network's images, differentiable any number of times in the weights.

    PyTorch's double backward of a convolution also computes the gradient of its input
    (a transposed convolution as large as the forward one) when that input needs none;
    a second-order inner loop meets it at every first layer, and on CPU with
    channels-last layout and tasks as groups it is one of the slowest convolutions of
    the iteration. Here the first backward gives weight and bias gradients only, and
    their backward is one convolution.
    """
    if x.requires_grad:
        raise ValueError("conv_fixed_input is for inputs that need no gradient")
    conv = (list(stride), list(padding), list(dilation), groups)
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return _FixedInputConv.apply(x, weight, bias, *conv)
    # Autocast would run F.conv2d with every operand in its reduced type, but it does not
    # see inside an autograd Function: cast here (differentiably), as it would.
    dtype = torch.get_autocast_dtype(device)
    x, weight, bias = (None if t is None else t.to(dtype) for t in (x, weight, bias))
    with torch.autocast(device, enabled=False):
        return _FixedInputConv.apply(x, weight, bias, *conv)


class _BatchNormTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, rstd = ctx.saved_tensors
        # A gradient from a convolution's double backward can arrive in the other layout,
        # where PyTorch's BatchNorm backward kernel is several times slower.
        dx, dw, db = _BatchNormBackward.apply(_same_layout(x, grad_out), x, weight, mean, rstd, ctx.eps)
        return dx, dw, db, None


def batch_norm_train(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                     eps: float = 1e-5) -> torch.Tensor:
    """BatchNorm with the batch's own statistics (no running statistics), as
    ``F.batch_norm(x, None, None, weight, bias, True, eps=eps)``, but twice differentiable
    at about a third of the cost (see :class:`_BatchNormBackward`)."""
    if (weight is None) != (bias is None):  # rare; the generic path handles it
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    return _BatchNormTrain.apply(x, weight, bias, eps)


def _batch_norm_args(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                     eps=1e-5):
    return input, running_mean, running_var, weight, bias, training, eps


def _conv_args(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return input, weight, bias, stride, padding, dilation, groups


def _as_tuple(value, dims: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


class _SecondOrderKernels(TorchFunctionMode):
    """Routes batch-statistics ``F.batch_norm`` calls to :func:`batch_norm_train`, and
    convolutions of inputs that need no gradient to :func:`conv_fixed_input`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            x, running_mean, running_var, weight, bias, training, eps = _batch_norm_args(*args, **kwargs)
            if training and running_mean is None and running_var is None:
                return batch_norm_train(x, weight, bias, eps)
        elif func is F.conv2d or func is F.conv1d:
            x, weight, bias, stride, padding, dilation, groups = _conv_args(*args, **kwargs)
            if not x.requires_grad and not isinstance(padding, str):
                dims = x.dim() - 2
                return conv_fixed_input(x, weight, bias, _as_tuple(stride, dims), _as_tuple(padding, dims),
                                        _as_tuple(dilation, dims), groups)
        return func(*args, **kwargs)


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
                with _SecondOrderKernels():
                    return functional_call(self.module, tensors, (x,))
            return functional_call(self.module, tensors, (x,))
        with _frozen_norms(self._norms):
            return functional_call(self.module, dict(params), (x,))



# -- task-batched passes --------------------------------------------------------------------


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


def functional_forward(module: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                       batch_norm: str = "task") -> torch.Tensor:
    """One pass of ``module`` on ``x`` with ``params`` substituted (see :class:`FunctionalModule`)."""
    return FunctionalModule(module, batch_norm)(params, x)


def like(reference: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` laid out in memory like ``reference`` (differentiably; itself when it already is).

    A fast weight ``θ - α g`` takes its strides from the arithmetic, not from θ: a
    channels-last ``(64, 1, 3, 3)`` convolution weight comes back channels-first (the
    two layouts differ only in the stride of the size-1 dimension), and the
    convolution then produces channels-first activations, which BatchNorm and pooling
    process several times slower on CPU, and the next channels-last layer converts
    back. Keeping every fast weight in its parameter's layout avoids both. The copy
    costs one parameter-sized write.
    """
    if tensor.stride() == reference.stride() or tensor.dim() != reference.dim():
        return tensor
    out = torch.empty_like(reference, requires_grad=False)
    return out.copy_(tensor)


def sgd_step(params: Mapping[str, torch.Tensor], names: Sequence[str], grads: Sequence[torch.Tensor],
             lrs: Sequence[torch.Tensor | float]) -> dict[str, torch.Tensor]:
    """``params`` with ``params[n] - lr * grad`` for each adapted name ``n``, each in its
    parameter's memory layout (a new dict; nothing is updated in place)."""
    out = dict(params)
    for name, grad, lr in zip(names, grads, lrs):
        if torch.is_tensor(lr) and lr.dim() and lr.shape[0] != grad.shape[0]:
            lr = lr[: grad.shape[0]]  # a head sliced to fewer ways: its per-element rates too
        out[name] = like(params[name], params[name] - lr * grad)
    return out


class _Surrogate(torch.autograd.Function):
    """Returns ``value``; its backward hands each parameter its precomputed gradient."""

    @staticmethod
    def forward(ctx, value, grads, *params):  # noqa: D401 - autograd signature
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_output):
        return (None, None, *[None if g is None else g * grad_output for g in ctx.grads])


def surrogate_loss(value: torch.Tensor, params: Sequence[torch.Tensor],
                   grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """A scalar equal to ``value`` whose gradient with respect to ``params[i]`` is ``grads[i]``.

    A method that computes its meta-gradient itself (task by task, freeing each task's
    graph at once) returns this, so that the shared trainer's ``loss.backward()`` and
    optimiser step apply exactly that gradient. A non-finite gradient makes the value
    NaN, so the trainer's divergence check sees it.
    """
    finite = all(bool(torch.isfinite(g).all()) for g in grads if g is not None)
    if not finite:
        value = value.detach() * float("nan")
    return _Surrogate.apply(value, tuple(grads), *params)


__all__ = ["BATCH_NORM_MODES", "FunctionalModule", "TaskBatched", "Unbatchable", "pack_tasks", "unbatchable_layer", "batch_norm_train", "channels_last", "check_batch_norm", "conv_fixed_input", "functional_forward", "like",
           "norm_buffer_names", "norm_layers", "sgd_step", "surrogate_loss"]
