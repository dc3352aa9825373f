"""Feature extractors: Conv-4, ResNet-12 and MLP, plus any ``nn.Module`` a user brings.

Every backbone maps a batch ``(n, c, h, w)`` to features ``(n, d)``; ``feature_dim``
finds ``d`` for any module by one dry forward pass. :data:`BACKBONES` holds them by
name: the built-in ones, and the architectures a user or a plug-in registers (then
``--backbone NAME`` trains them and pre-trained files naming them load).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..params import Boolean, Integer, ListOf, Optional, check_known, validate
from ..registry import Registry

#: Every backbone by name: a class or function returning an ``nn.Module`` from its options.
#: Its constructor's ``in_channels``, ``in_features`` or ``image_shape``, when it has one,
#: comes from the input shape (see :func:`build_backbone`); the rest are options, checked
#: against its ``_parameter_constraints`` where it declares them.
BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")

# What the size options of the built-in backbones may hold. The bounds are far beyond
# any published few-shot backbone; past them a typo (width 10000000) would allocate
# memory without end rather than fail.
_SIZE = Integer(low=1, high=4096)


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3×3 convolution, BatchNorm, ReLU, 2×2 max-pool: one block of Conv-4.

    The max-pool runs before the ReLU: the two commute exactly (ReLU is monotone), and
    pooling first makes the ReLU and its backward pass work on a quarter of the values.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
    )


@BACKBONES.register("conv4")
class Conv4(nn.Sequential):
    """The standard few-shot backbone (Vinyals et al., 2016; Snell et al., 2017):
    four conv blocks of ``width`` filters, flattened. 64 features on 28×28 input,
    1600 on 84×84.

    Weights and activations use the channels-last memory layout, which oneDNN's CPU
    convolutions, BatchNorm and pooling run several times faster in
    (``benchmarks/results/protonet_omniglot.json`` has the measurements).
    """

    _parameter_constraints = {"width": _SIZE, "depth": Integer(low=1, high=16)}

    def __init__(self, in_channels: int = 1, width: int = 64, depth: int = 4):
        blocks = [conv_block(in_channels if i == 0 else width, width) for i in range(depth)]
        super().__init__(*blocks, nn.Flatten())
        self.in_channels, self.width, self.depth = in_channels, width, depth
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last))

    def __getitem__(self, index):
        # A slice (e.g. ``conv4[:-1]`` for feature maps) is a plain Sequential of the same
        # modules: Conv4's constructor takes sizes, not modules.
        if isinstance(index, slice):
            return nn.Sequential(*list(self)[index])
        return super().__getitem__(index)


class ResidualBlock(nn.Module):
    """Three 3×3 conv-BN-LeakyReLU layers with a 1×1 projected shortcut, then 2×2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        layers = []
        for i in range(3):
            layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out_channels)]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2, ceil_mode=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


@BACKBONES.register("resnet12")
class ResNet12(nn.Sequential):
    """ResNet-12 (Oreshkin et al., 2018; Lee et al., 2019): four residual blocks of
    widths 64-160-320-640, global average pooling."""

    _parameter_constraints = {"widths": ListOf(_SIZE, 1, 16)}

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (64, 160, 320, 640)):
        blocks, previous = [], in_channels
        for width in widths:
            blocks.append(ResidualBlock(previous, width))
            previous = width
        super().__init__(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())


@BACKBONES.register("mlp")
class MLP(nn.Sequential):
    """Fully connected ReLU network on flattened input; ``out_features`` adds a final
    linear layer (e.g. 1 for sinusoid regression: ``MLP(1, (40, 40), out_features=1)``)."""

    _parameter_constraints = {"hidden": ListOf(Integer(low=1, high=65536)),
                              "out_features": Optional(Integer(low=1, high=65536)), "batch_norm": Boolean()}

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 128), out_features: int | None = None,
                 batch_norm: bool = False):
        layers: list[nn.Module] = [nn.Flatten()]
        previous = in_features
        for width in hidden:
            layers.append(nn.Linear(previous, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
            previous = width
        if out_features is not None:
            layers.append(nn.Linear(previous, out_features))
        super().__init__(*layers)


def shape_arguments(build: Callable[..., nn.Module], image_shape: Sequence[int]) -> dict[str, Any]:
    """The arguments of backbone ``build`` that the input shape gives: ``in_channels`` (its
    first entry), ``in_features`` (all its values) or ``image_shape`` itself, where taken."""
    taken = inspect.signature(build).parameters
    # plain ints: the network also builds on the meta device
    given = {"in_channels": int(image_shape[0]), "in_features": math.prod(int(s) for s in image_shape),
             "image_shape": tuple(int(s) for s in image_shape)}
    return {k: v for k, v in given.items() if k in taken}


def backbone_options(build: Callable[..., nn.Module]) -> dict[str, inspect.Parameter]:
    """The options of backbone ``build``: its parameters but those the input shape gives."""
    return {n: p for n, p in inspect.signature(build).parameters.items()
            if n not in ("in_channels", "in_features", "image_shape") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def build_backbone(name: str, image_shape: Sequence[int], **options) -> nn.Module:
    """Backbone ``name`` of :data:`BACKBONES` for inputs of ``image_shape`` = (channels, height, width)."""
    build = BACKBONES[name]
    if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(build).parameters.values()):
        check_known(f"backbone '{name}'", options, backbone_options(build))
    validate(f"bad option for backbone '{name}':", options, getattr(build, "_parameter_constraints", {}))
    try:
        module = build(**{**shape_arguments(build, image_shape), **options})
    except TypeError as e:
        raise ConfigError(f"bad option for backbone '{name}': {e}") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"the backbone registered as '{name}' returned a {type(module).__name__}, not an nn.Module")
    return module


@torch.no_grad()
def feature_dim(backbone: nn.Module, image_shape: Sequence[int]) -> int:
    """Width of ``backbone``'s output for one input of ``image_shape`` (a dry run on its device)."""
    was_training = backbone.training
    first = next(iter(backbone.parameters()), None)
    backbone.eval()
    try:
        out = backbone(torch.zeros(2, *image_shape, device=None if first is None else first.device))
    finally:
        backbone.train(was_training)
    if out.ndim != 2:
        raise ConfigError(f"backbone must return (batch, features); it returned shape {tuple(out.shape)} "
                          "(end it with nn.Flatten() or a pooling layer)")
    return int(out.shape[1])
