"""Classifier heads over backbone features, and how to fit them on a support set.

Used by methods (Baseline's class head, fine-tuning's task head), by pre-trained model
files (a saved head is rebuilt from its description) and by model selection (the
linear-probe ground truth).

Devices: heads are initialised on the host from a CPU generator (the same weights
whatever the device) and then moved to the features' device; the logistic probe is
fitted on the host by scikit-learn (its float64 copy of the support features is small)
and its head moved back.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

HEAD_TYPES = ("linear", "cosine")
OPTIMIZERS = ("adam", "sgd")


class CosineHead(nn.Module):
    """Cosine-similarity classifier (Baseline++, Chen et al. 2019; Gidaris and Komodakis, 2018).

    ``logits = scale · g_c · cos(f, w_c)``. With ``learnable_norm`` each class has a
    learned norm ``g_c`` (initialised to the norm of its initial weight row), as the
    weight normalisation of Chen et al.'s code (their issues #4 and #8); without it the
    logits are pure scaled cosines. ``scale`` defaults to their choice: 2 for up to
    200 classes, 10 beyond (Omniglot's thousands).
    """

    def __init__(self, in_features: int, out_features: int, scale: float | None = None,
                 learnable_norm: bool = True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.scale = float(scale) if scale is not None else (2.0 if out_features <= 200 else 10.0)
        self.learnable_norm = bool(learnable_norm)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.norm = nn.Parameter(torch.ones(self.out_features)) if self.learnable_norm else None
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        bound = 1.0 / math.sqrt(max(self.in_features, 1))
        with torch.no_grad():
            self.weight.uniform_(-bound, bound, generator=generator)
            if self.norm is not None:
                self.norm.copy_(self.weight.norm(dim=1))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, scale={self.scale}, learnable_norm={self.learnable_norm}"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(features, dim=1, eps=1e-5) @ F.normalize(self.weight, dim=1, eps=1e-5).T
        return self.scale * (cosine * self.norm if self.norm is not None else cosine)


def new_head(kind: str, in_features: int, way: int, *, generator: torch.Generator | None = None,
             scale: float | None = None, device: torch.device | str | None = None) -> nn.Module:
    """A freshly initialised ``way``-class head on ``in_features`` features, seeded by
    ``generator`` (a CPU generator), then moved to ``device``.

    ``linear``: PyTorch's default ``nn.Linear`` initialisation (uniform ±1/√d), drawn
    from ``generator``; ``cosine``: a :class:`CosineHead`.
    """
    if kind not in HEAD_TYPES:
        raise ConfigError(f"unknown head type '{kind}'; choose one of: {', '.join(HEAD_TYPES)}")
    with torch.device("cpu"):  # on the host, where the generator draws
        head = CosineHead(in_features, way, scale) if kind == "cosine" else nn.Linear(in_features, way)
    if kind == "cosine":
        head.reset_parameters(generator)
        return head.to(device)
    bound = 1.0 / math.sqrt(max(in_features, 1))
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    return head.to(device)


def train_head(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float,
               batch_size: int | None = None, optimizer: str = "adam", momentum: float = 0.9,
               dampening: float = 0.0, weight_decay: float = 0.0,
               generator: torch.Generator | None = None) -> nn.Module:
    """Train ``head`` on fixed ``features`` with cross-entropy; returns it.

    ``batch_size=None`` takes full-batch steps (``epochs`` of them); otherwise each
    epoch visits the examples in a fresh random order (from ``generator``) in batches,
    as Chen et al.'s adaptation (SGD, lr 0.01, momentum 0.9, dampening 0.9, weight decay
    0.001, batch 4, 100 epochs).
    """
    features, labels = features.detach(), labels.detach()
    opt = make_optimizer(optimizer, [{"params": list(head.parameters()), "lr": lr}], momentum, dampening, weight_decay)
    n = len(features)
    with torch.enable_grad():
        for _ in range(int(epochs)):
            order = torch.randperm(n, generator=generator, device="cpu").to(features.device) if batch_size else None
            for start in range(0, n, batch_size or n):
                index = order[start:start + batch_size] if order is not None else slice(None)
                loss = F.cross_entropy(head(features[index]), labels[index])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return head


_CONTROLLER = None


def blas_controller():
    """threadpoolctl's controller of the BLAS pools (made once: building it scans the loaded libraries)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def logistic_probe(features: torch.Tensor, labels: torch.Tensor, way: int, C: float = 1.0,
                   max_iter: int = 1000) -> nn.Linear:
    """Multinomial L2 logistic regression (scikit-learn, lbfgs) as an ``nn.Linear`` head.

    Classes absent from ``labels`` get a bias of -1e4 (never predicted). With two
    classes scikit-learn fits one weight vector ``w``; the head gets ``(-w/2, w/2)``,
    which gives the same probabilities. Fitted on the host; the head is on ``features``' device.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = features.detach().to("cpu", torch.float64).numpy()
    y = labels.detach().cpu().numpy()
    present = np.unique(y)
    head = nn.Linear(x.shape[1], way, device="cpu")
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)
        if len(present) == 1:
            head.bias[int(present[0])] = 0.0
            return head.to(features.device)
        # One BLAS thread: on a tiny problem, a pool of threads costs 30x the fit on a busy machine.
        with warnings.catch_warnings(), blas_controller().limit(limits=1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=float(C), max_iter=max_iter).fit(x, y)
        coef = torch.as_tensor(model.coef_, dtype=torch.float32, device="cpu")
        intercept = torch.as_tensor(model.intercept_, dtype=torch.float32, device="cpu")
        if len(present) == 2:
            coef = torch.cat([-coef / 2, coef / 2])
            intercept = torch.cat([-intercept / 2, intercept / 2])
        index = torch.as_tensor(model.classes_, dtype=torch.int64, device="cpu")
        head.weight[index] = coef
        head.bias[index] = intercept
    return head.to(features.device)


class NormalizedHead(nn.Module):
    """A head applied to L2-normalised features."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(F.normalize(features, dim=1))


def make_optimizer(kind: str, groups: list[dict], momentum: float = 0.9, dampening: float = 0.0,
               weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum, dampening=dampening,
                               weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=groups[0]["lr"], weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer '{kind}'; choose one of: {', '.join(OPTIMIZERS)}")
