"""Second-order kernels: BatchNorm with a closed-form double backward, and convolutions of
inputs that need no gradient.

Second-order inner loops (MAML, Finn et al. 2017, arXiv:1703.03400) differentiate every
layer twice. PyTorch's generic double backward of BatchNorm is a composite of some thirty
full-size operations, about a fifth of a 5-step second-order MAML iteration on CPU.
:func:`batch_norm_train` runs batch-statistics BatchNorm with PyTorch's own forward and
first backward kernels and a double backward written out in closed form (about 3x
faster; equal to PyTorch's to float64 rounding, see ``tests/test_maml.py``).
:func:`conv_fixed_input` convolves an input that needs no gradient (the images) and
skips the image gradient PyTorch's double backward would compute.
:class:`SecondOrderKernels` routes a module's own ``F.batch_norm`` and ``F.conv*d``
calls to them for the duration of a pass (a ``TorchFunctionMode``), so the module is
not modified.

Memory layout matters as much as arithmetic on CPU: :func:`channels_last` gives
one-channel tensors channels-last strides, which ``contiguous`` does not.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

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


class SecondOrderKernels(TorchFunctionMode):
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


__all__ = ["SecondOrderKernels", "batch_norm_train", "channels_last", "conv_fixed_input"]
