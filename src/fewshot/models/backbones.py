"""Feature extractors: Conv-4, ResNet-12 and MLP, plus any ``nn.Module`` a user brings.

Every backbone maps a batch ``(n, c, h, w)`` to features ``(n, d)``; ``feature_dim``
finds ``d`` for any module by one dry forward pass.
"""

from __future__ import annotations

import inspect
import math
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError, did_you_mean
from ..params import Boolean, Integer, ListOf, Optional, check_known, validate


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


class Conv4(nn.Sequential):
    """The standard few-shot backbone (Vinyals et al., 2016; Snell et al., 2017):
    four conv blocks of ``width`` filters, flattened. 64 features on 28×28 input,
    1600 on 84×84.

    Weights and activations use the channels-last memory layout, which oneDNN's CPU
    convolutions, BatchNorm and pooling run several times faster in
    (``benchmarks/results/protonet_omniglot.json`` has the measurements).
    """

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


class ResNet12(nn.Sequential):
    """ResNet-12 (Oreshkin et al., 2018; Lee et al., 2019): four residual blocks of
    widths 64-160-320-640, global average pooling."""

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (64, 160, 320, 640)):
        blocks, previous = [], in_channels
        for width in widths:
            blocks.append(ResidualBlock(previous, width))
            previous = width
        super().__init__(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class MLP(nn.Sequential):
    """Fully connected ReLU network on flattened input; ``out_features`` adds a final
    linear layer (e.g. 1 for sinusoid regression: ``MLP(1, (40, 40), out_features=1)``)."""

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


BACKBONES = ("conv4", "resnet12", "mlp")


def build_backbone(name: str, image_shape: Sequence[int], **options) -> nn.Module:
    """A backbone by name for inputs of ``image_shape`` = (channels, height, width)."""
    channels = int(image_shape[0])
    classes = {"conv4": Conv4, "resnet12": ResNet12, "mlp": MLP}
    if name in classes:  # the constructor's first argument comes from image_shape
        check_known(f"backbone '{name}'", options, list(inspect.signature(classes[name]).parameters)[1:])
    validate(f"bad option for backbone '{name}':", options, OPTIONS.get(name, {}))
    try:
        if name == "conv4":
            return Conv4(channels, **options)
        if name == "resnet12":
            return ResNet12(channels, **options)
        if name == "mlp":
            in_features = math.prod(int(s) for s in image_shape)  # plain ints: also builds on the meta device
            return MLP(in_features, **options)
    except TypeError as e:
        raise ConfigError(f"bad option for backbone '{name}': {e}") from None
    raise ConfigError(f"unknown backbone '{name}'{did_you_mean(name, BACKBONES)}; choose one of: {', '.join(BACKBONES)}")


# What the size options of the built-in backbones may hold. The bounds are far beyond
# any published few-shot backbone; past them a typo (width 10000000) would allocate
# memory without end rather than fail.
_SIZE = Integer(low=1, high=4096)
OPTIONS = {"conv4": {"width": _SIZE, "depth": Integer(low=1, high=16)},
           "resnet12": {"widths": ListOf(_SIZE, 1, 16)},
           "mlp": {"hidden": ListOf(Integer(low=1, high=65536)), "out_features": Optional(Integer(low=1, high=65536)),
                   "batch_norm": Boolean()}}


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
