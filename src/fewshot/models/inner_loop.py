"""The arithmetic of a gradient-based inner loop: fast weights and the meta-gradient's hand-over.

:func:`sgd_step` forms the fast weights ``θ - α g`` in their parameters' memory layout
(:func:`like`), and :func:`surrogate_loss` is the scalar that lets a method hand the
shared trainer a meta-gradient it computed itself (task by task, so the graphs of a
meta-batch never all live at once), as MAML (Finn et al. 2017, arXiv:1703.03400) and
Reptile (Nichol et al. 2018, arXiv:1803.02999) do here.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

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


__all__ = ["like", "sgd_step", "surrogate_loss"]
