"""Feature-wise transformation layers (Tseng, Lee, Huang and Yang, "Cross-Domain Few-Shot
Classification via Learned Feature-Wise Transformation", ICLR 2020, arXiv:2001.08735).

After each BatchNorm layer of the backbone, an FT layer scales and shifts every channel of
the normalised feature map by random amounts during meta-training,
``y = gamma * x + beta``, ``gamma ~ N(1, softplus(theta_gamma))``, ``beta ~ N(0, softplus(theta_beta))``
(a sharp softplus, ``beta=100`` as the authors' code has it: nearly ``max(0, theta)``)
drawn per channel once per forward pass (shared by the batch, as in the authors' code):
the model meets feature distributions of domains it has not seen. At test time the layer is
the identity.

**Fixed or learned hyper-parameters** (the backbone option ``learned``, decided here, once).
By default ``theta_gamma`` and ``theta_beta`` are fixed at the paper's values 0.3 and 0.5
(their "FT" rows), stored as buffers, never trained. With ``learned=True`` they are
parameters learned by learning-to-learn (the paper's LFT, its Algorithm 1), and only by it:
each meta-training step updates the metric model on a pseudo-seen domain's episode with the FT
layers on, takes the loss of the updated model on a pseudo-unseen domain's episode with them
off, and moves the thetas down the gradient of that loss through the update
(:func:`fewshot.methods.lft.learning_to_learn_loss`; ``lft_lr`` is that update's step).

*Against the authors' code* (github hytseng0509/CrossDomainFewShot, ``methods/backbone.py``
and ``methods/LFTNet.py``): their softplus has ``beta=100``, so the thetas 0.3 and 0.5 are noise
standard deviations of about 0.3 and 0.5 (:func:`noise_scales`); so is this module's by
default. fewshot before December 2026 used torch's default ``beta=1`` (deviations 0.854 and
0.974, 11 to 23 points worse on Omniglot's shifts: ``benchmarks/results/cross_domain_l2l.md``);
the backbone option ``softplus_beta=1`` gives that back. Their FT optimiser is Adam at 1e-3
(weight decay 1e-8), here the run's one optimiser, Adam at ``--lr`` (default 1e-3).

**When they act.** An FT layer transforms only when its module is in training mode *and*
the layers are enabled; :func:`fewshot.evaluate.evaluate` disables them for the whole of an
evaluation (:func:`transforms_off`), so a method that keeps training mode at test time
(MAML's test-time BatchNorm) or fine-tunes at test time gets no noise either. The noise comes
from torch's global generator, which the trainer seeds and checkpoints: a resumed run draws
the same transformations.

``conv4-ft`` (``--backbone conv4-ft``) is Conv-4 with an FT layer after each BatchNorm;
:func:`add_feature_transforms` puts them into any backbone built of ``nn.Sequential`` blocks.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..params import Boolean, Integer, Real
from .backbones import BACKBONES, Conv4

#: The paper's hyper-parameters (before the softplus): theta_gamma 0.3, theta_beta 0.5.
THETA_GAMMA, THETA_BETA = 0.3, 0.5
#: The sharpness of the softplus that turns a theta into a noise deviation: the authors' 100.
SOFTPLUS_BETA = 100.0
#: The pseudo-seen update's step in learning-to-learn: the authors' model learning rate (Adam's 1e-3).
LFT_LR = 1e-3


class FeatureWiseTransform(nn.Module):
    """One FT layer over ``channels`` channels (see the module docstring)."""

    def __init__(self, channels: int, theta_gamma: float = THETA_GAMMA, theta_beta: float = THETA_BETA,
                 learned: bool = False, softplus_beta: float = SOFTPLUS_BETA):
        super().__init__()
        self.channels, self.learned, self.softplus_beta = int(channels), bool(learned), float(softplus_beta)
        for name, value in (("theta_gamma", theta_gamma), ("theta_beta", theta_beta)):
            tensor = torch.full((1, channels, 1, 1), float(value))
            # Learned: parameters (in the checkpoint under the same names as the fixed buffers).
            if self.learned:
                self.register_parameter(name, nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)
        self.enabled = True

    def active(self) -> bool:
        return self.training and self.enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active():
            return x
        shape, sharp = (1, self.channels, 1, 1), self.softplus_beta
        gamma = 1 + torch.randn(shape, device=x.device, dtype=x.dtype) * F.softplus(self.theta_gamma, sharp).to(x.dtype)
        beta = torch.randn(shape, device=x.device, dtype=x.dtype) * F.softplus(self.theta_beta, sharp).to(x.dtype)
        return gamma * x + beta

    def extra_repr(self) -> str:
        return f"{self.channels}, theta_gamma={float(self.theta_gamma.detach().flatten()[0]):g}, " \
               f"theta_beta={float(self.theta_beta.detach().flatten()[0]):g}" + (", learned" if self.learned else "")


def add_feature_transforms(backbone: nn.Module, theta_gamma: float = THETA_GAMMA, theta_beta: float = THETA_BETA,
                           learned: bool = False, lft_lr: float = LFT_LR,
                           softplus_beta: float = SOFTPLUS_BETA) -> nn.Module:
    """``backbone`` with an FT layer inserted after every ``BatchNorm2d`` that sits in an
    ``nn.Sequential`` (in place; returned). Returns the number inserted as ``backbone.ft_layers``;
    ``learned`` and ``lft_lr``: see the module docstring (kept as ``backbone.lft_lr``)."""
    count = 0
    for module in list(backbone.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        for i in reversed(range(len(module))):
            if isinstance(module[i], nn.BatchNorm2d):
                module.insert(i + 1, FeatureWiseTransform(module[i].num_features, theta_gamma, theta_beta, learned,
                                                          softplus_beta))
                count += 1
    backbone.ft_layers, backbone.lft_lr = count, float(lft_lr)
    return backbone


def learned_transforms(module: nn.Module | None) -> list[nn.Parameter]:
    """The learned FT hyper-parameters of ``module`` (each layer's theta_gamma, theta_beta);
    empty when its FT layers are fixed, or it has none."""
    if module is None:
        return []
    return [p for m in module.modules() if isinstance(m, FeatureWiseTransform) and m.learned
            for p in (m.theta_gamma, m.theta_beta)]


@contextlib.contextmanager
def transforms_off(module: nn.Module) -> Iterator[None]:
    """Every FT layer of ``module`` the identity inside the block (evaluation), as it was after."""
    layers = [m for m in module.modules() if isinstance(m, FeatureWiseTransform)]
    before = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield
    finally:
        for m, was in zip(layers, before):
            m.enabled = was


@BACKBONES.register("conv4-ft")
class Conv4FT(Conv4):
    """Conv-4 with a feature-wise transformation layer after each BatchNorm (Tseng et al.,
    arXiv:2001.08735; see :mod:`fewshot.models.feature_transform`). Its weights are Conv-4's:
    fixed FT layers add no trainable parameter; ``learned=True`` adds the thetas, learned by
    learning-to-learn with a pseudo-seen step of ``lft_lr``; ``softplus_beta`` (default the
    authors' 100) is the sharpness of the softplus from theta to noise deviation."""

    _parameter_constraints = {**Conv4._parameter_constraints, "theta_gamma": Real(low=-20, high=20),
                              "theta_beta": Real(low=-20, high=20), "depth": Integer(low=1, high=16),
                              "learned": Boolean(), "lft_lr": Real(low=0, high=10, open_low=True),
                              "softplus_beta": Real(low=0, high=1000, open_low=True)}

    def __init__(self, in_channels: int = 1, width: int = 64, depth: int = 4, theta_gamma: float = THETA_GAMMA,
                 theta_beta: float = THETA_BETA, learned: bool = False, lft_lr: float = LFT_LR,
                 softplus_beta: float = SOFTPLUS_BETA):
        super().__init__(in_channels, width, depth)
        add_feature_transforms(self, theta_gamma, theta_beta, learned, lft_lr, softplus_beta)
        self.theta_gamma, self.theta_beta, self.learned = float(theta_gamma), float(theta_beta), bool(learned)
        self.to(memory_format=torch.channels_last)


def noise_scales(theta_gamma: float = THETA_GAMMA, theta_beta: float = THETA_BETA,
                 softplus_beta: float = SOFTPLUS_BETA) -> tuple[float, float]:
    """The standard deviations of gamma and beta, ``softplus(theta)`` at sharpness ``softplus_beta``
    (0.300 and 0.500 at the defaults; 0.854 and 0.974 with ``softplus_beta=1``)."""
    return tuple(float(F.softplus(torch.tensor(t, dtype=torch.float64), softplus_beta))
                 for t in (theta_gamma, theta_beta))


__all__ = ["Conv4FT", "FeatureWiseTransform", "LFT_LR", "SOFTPLUS_BETA", "THETA_BETA", "THETA_GAMMA", "add_feature_transforms",
           "learned_transforms", "noise_scales", "transforms_off"]
