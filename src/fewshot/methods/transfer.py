"""Transfer learning: adapt a pre-trained backbone to a new task's support set.

:class:`FineTune` is a :class:`~fewshot.methods.base.Method` whose :meth:`adapt` takes
a backbone (pre-trained with :mod:`~fewshot.methods.pretrain`, meta-trained by any
method, loaded with :func:`fewshot.models.pretrained.load_pretrained`, or any
``nn.Module`` mapping images to ``(batch, features)``) and fits it to the support set
with one of these strategies:

``linear-probe``
    Feature extraction: the backbone is frozen and a linear classifier is fitted on its
    features, either scikit-learn's logistic regression (``probe="logistic"``, L2
    penalty ``C``) or a linear/cosine head trained with Adam (``probe="torch"``).
``finetune``
    The whole network with a new head; the backbone learns at ``backbone_lr`` (by
    default a tenth of the head's ``lr``).
``freeze-k``
    Hybrid: the first ``k`` blocks stay frozen, the rest and the head are tuned.
``discriminative``
    Layer-wise decaying learning rates (Howard and Ruder, 2018): the top block learns
    at ``backbone_lr``, each block below at ``decay`` times the rate of the one above.
``gradual-unfreeze``
    From the head down (Howard and Ruder, 2018): the head trains alone, then every
    ``unfreeze_every`` steps the next block down joins.
``lp-ft``
    Kumar et al. (2022): a linear probe first, then everything is fine-tuned starting
    from the probe's head (``head="probe"``), which distorts the features less than
    fine-tuning under a random head.
``surgical``
    Lee et al. (2022): only one chosen ``block`` (and the head) is tuned: the first for
    input-level shifts, the last for output-level ones.

``head`` says where the task head starts: ``"reinit"`` (random, the default but for
LP-FT), ``"probe"`` (a linear probe fitted first; the LP of LP-FT) or ``"keep"`` (the
source model's own head, when it already has ``way`` outputs, e.g. a MAML head).
``cv=True`` chooses hyper-parameters on the support set itself (see
:func:`cv_folds`): stratified k-fold, or leave-one-out at 1 shot.

**Defaults** (:data:`DEFAULTS`): 50 full-batch steps of SGD with momentum 0.9 on the
support set, head learning rate 0.01, backbone 0.001. SGD rather than Adam: Adam's
normalised steps move the backbone by about the learning rate whatever the gradient,
so a good starting head (LP-FT's) no longer protects the features; on Omniglot with a
Baseline backbone, LP-FT fell below fine-tuning with Adam and matched the linear probe
with SGD.

**Blocks.** Freezing works block by block. For an ``nn.Sequential`` backbone (Conv-4,
ResNet-12, MLP and most user networks) the blocks are its top-level children that
hold parameters (Conv-4: its four conv blocks; Flatten, ReLU and pooling are skipped).
Other modules are split into their direct children that hold parameters, in
registration order; a module with a single such child is split through it (a wrapper
around a Sequential splits like the Sequential). Parameters held directly by a
container join the last block. Pass ``blocks=[...]`` (names of sub-modules, bottom to
top) to split a network your own way.

**No trace.** Every adaptation deep-copies the backbone: the trained model is never
modified, and frozen parameters are not even handed to the optimiser, so they stay
bit-identical. Each adaptation is seeded (``seed``), so an episode's result does not
depend on what ran before it.

**BatchNorm.** ``bn="eval"`` (the default for backbones of ``test_mode="eval"``
methods) normalises with the running statistics throughout, in fine-tuning as in
prediction; ``bn="batch"`` (the default for MAML-family backbones) normalises every
batch with its own statistics, the transductive convention of MAML.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Method, Predictor, accuracy

STRATEGIES = ("linear-probe", "finetune", "freeze-k", "discriminative", "gradual-unfreeze", "lp-ft", "surgical")
HEADS = ("reinit", "probe", "keep")
HEAD_TYPES = ("linear", "cosine")
PROBES = ("logistic", "torch")
BN_MODES = ("eval", "batch")
UNTUNABLE = ("strategy", "cv", "cv_grid", "cv_folds", "blocks", "seed")
OPTIMIZERS = ("adam", "sgd")


# -- heads ----------------------------------------------------------------------------------

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
             scale: float | None = None) -> nn.Module:
    """A freshly initialised ``way``-class head on ``in_features`` features, seeded by ``generator``.

    ``linear``: PyTorch's default ``nn.Linear`` initialisation (uniform ±1/√d), drawn
    from ``generator``; ``cosine``: a :class:`CosineHead`.
    """
    if kind == "cosine":
        head = CosineHead(in_features, way, scale)
        head.reset_parameters(generator)
        return head
    if kind != "linear":
        raise ConfigError(f"unknown head type '{kind}'; choose one of: {', '.join(HEAD_TYPES)}")
    head = nn.Linear(in_features, way)
    bound = 1.0 / math.sqrt(max(in_features, 1))
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    return head


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
    opt = _optimizer(optimizer, [{"params": list(head.parameters()), "lr": lr}], momentum, dampening, weight_decay)
    n = len(features)
    with torch.enable_grad():
        for _ in range(int(epochs)):
            order = torch.randperm(n, generator=generator) if batch_size else None
            for start in range(0, n, batch_size or n):
                index = order[start:start + batch_size] if order is not None else slice(None)
                loss = F.cross_entropy(head(features[index]), labels[index])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return head


_CONTROLLER = None


def _blas_controller():
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
    which gives the same probabilities.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    import warnings

    x = features.detach().to(torch.float64).cpu().numpy()
    y = labels.detach().cpu().numpy()
    present = np.unique(y)
    head = nn.Linear(x.shape[1], way)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)
        if len(present) == 1:
            head.bias[int(present[0])] = 0.0
            return head
        # One BLAS thread: on a tiny problem, a pool of threads costs 30x the fit on a busy machine.
        with warnings.catch_warnings(), _blas_controller().limit(limits=1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=float(C), max_iter=max_iter).fit(x, y)
        coef = torch.as_tensor(model.coef_, dtype=torch.float32)
        intercept = torch.as_tensor(model.intercept_, dtype=torch.float32)
        if len(present) == 2:
            coef = torch.cat([-coef / 2, coef / 2])
            intercept = torch.cat([-intercept / 2, intercept / 2])
        index = torch.as_tensor(model.classes_, dtype=torch.int64)
        head.weight[index] = coef
        head.bias[index] = intercept
    return head


# -- blocks ---------------------------------------------------------------------------------

@dataclass
class Block:
    """A unit of freezing: named sub-modules and the parameters they hold."""

    name: str
    modules: list[nn.Module]
    params: list[nn.Parameter] = field(default_factory=list)
    child: int | None = None  # index among the top-level children, for Sequential backbones

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def split_blocks(backbone: nn.Module, names: Sequence[str] | None = None) -> list[Block]:
    """The blocks of ``backbone``, bottom (input) to top (features); see the module docstring."""
    if names:
        lookup = dict(backbone.named_modules())
        blocks, seen = [], set()
        for name in names:
            if name not in lookup:
                raise ConfigError(f"backbone has no sub-module '{name}'; it has: "
                                  f"{', '.join(n for n in lookup if n)[:300]}")
            params = [p for p in lookup[name].parameters() if id(p) not in seen]
            seen.update(id(p) for p in params)
            blocks.append(Block(name, [lookup[name]], params))
        rest = [p for p in backbone.parameters() if id(p) not in seen]
        if rest and blocks:
            blocks[-1].params.extend(rest)
        return blocks
    prefix, module = "", backbone
    while True:
        children = [(n, c) for n, c in module.named_children() if _has_params(c)]
        if len(children) == 1 and not isinstance(module, nn.Sequential) and not list(module.parameters(recurse=False)):
            prefix, module = f"{prefix}{children[0][0]}.", children[0][1]
            continue
        break
    if not children:
        return [Block(prefix.rstrip(".") or "backbone", [module], list(module.parameters()))] if _has_params(module) else []
    sequential = module is backbone and isinstance(backbone, nn.Sequential)
    all_children = [n for n, _ in module.named_children()]
    blocks = [Block(f"{prefix}{n}", [c], list(c.parameters()), all_children.index(n) if sequential else None)
              for n, c in children]
    own = list(module.parameters(recurse=False))
    if own:
        blocks[-1].params.extend(own)
    return blocks


def _sequential_runner(backbone: nn.Module) -> Callable[[torch.Tensor, int, int], torch.Tensor] | None:
    """``run(x, start, stop)`` applying top-level children ``start .. stop-1``, for backbones
    whose forward is the plain Sequential one (Conv-4 only adds a memory format); else None."""
    from ..models.backbones import Conv4

    forward = type(backbone).forward
    if not isinstance(backbone, nn.Sequential) or forward not in (nn.Sequential.forward, Conv4.forward):
        return None
    children = list(backbone.children())
    channels_last = isinstance(backbone, Conv4)

    def run(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        if start == 0 and channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        for child in children[start:stop]:
            x = child(x)
        return x

    run.length = len(children)  # type: ignore[attr-defined]
    return run


# -- schedules ------------------------------------------------------------------------------

def discriminative_rates(num_blocks: int, lr: float, decay: float) -> list[float]:
    """Learning rate of each block, bottom to top: the top block gets ``lr``, each block
    below ``decay`` times the rate of the block above it."""
    return [lr * decay ** (num_blocks - 1 - i) for i in range(num_blocks)]


def gradual_schedule(num_blocks: int, steps: int, every: int | None = None) -> list[tuple[int, int]]:
    """When each block is unfrozen: ``[(step, block), ...]`` from the top block down.

    The head trains alone for ``every`` steps, then the top block joins, ``every`` steps
    later the one below it, and so on (blocks whose turn would come at or after
    ``steps`` never do). ``every`` defaults to ``steps // (num_blocks + 1)`` (at least
    1), so the whole network trains for the last stage.
    """
    every = max(1, steps // (num_blocks + 1)) if every is None else int(every)
    if every < 1:
        raise ConfigError(f"unfreeze_every must be at least 1, got {every}")
    events = [((j + 1) * every, num_blocks - 1 - j) for j in range(num_blocks)]
    return [(s, b) for s, b in events if s < steps]


# -- cross-validation -----------------------------------------------------------------------

def cv_folds(labels: torch.Tensor, max_folds: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds of a support set: ``[(train_index, held_out_index), ...]``.

    With at least 2 examples per class: ``min(max_folds, shot)`` folds, fold ``f`` holding
    out the examples whose rank within their class is ``f`` modulo the fold count, so
    every class is in every training part. At 1 shot: leave-one-out, one fold per
    example (at most ``max_folds``, spread over the classes); the held-out example's
    class would vanish from training, so its training part keeps an augmented copy of
    it (see :func:`_augment`); its index is given as ``-1 - i`` in ``train_index``.
    """
    y = labels.cpu().numpy()
    classes, counts = np.unique(y, return_counts=True)
    rank = np.zeros(len(y), dtype=np.int64)
    for c in classes:
        members = np.flatnonzero(y == c)
        rank[members] = np.arange(len(members))
    shot = int(counts.min())
    everything = np.arange(len(y))
    if shot >= 2:
        k = min(int(max_folds), shot)
        return [(everything[rank % k != f], everything[rank % k == f]) for f in range(k)]
    order = np.argsort(rank, kind="stable")  # one example of each class before any second one
    folds = []
    for i in order[: max(1, int(max_folds))]:
        train = np.concatenate([everything[everything != i], [-1 - i]])
        folds.append((train, np.array([i])))
    return folds


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A slightly changed copy of one example: images (at least 8×8) are shifted by 1-2
    pixels with zero fill; other inputs get Gaussian noise of 5% of their spread."""
    if x.ndim == 3 and x.shape[-1] >= 8 and x.shape[-2] >= 8:
        dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
        if dy == 0 and dx == 0:
            dx = 1
        out = torch.zeros_like(x)
        h, w = x.shape[-2:]
        out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return out
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x + 0.05 * (x.std() if x.numel() > 1 else 1.0) * noise


# -- the method -----------------------------------------------------------------------------

DEFAULTS: dict[str, Any] = {
    "strategy": "finetune",
    "lr": 0.01,               # head learning rate (and of the whole network if backbone_lr is given)
    "backbone_lr": None,      # default: lr * backbone_lr_scale
    "backbone_lr_scale": 0.1,
    "steps": 50,
    "optimizer": "sgd",       # sgd (momentum 0.9) | adam; Adam's normalised steps distort features even
                              # when the loss is already small, which defeats LP-FT (Kumar et al. use SGD)
    "weight_decay": 0.0,
    "batch_size": None,       # None: full-batch steps on the support set
    "head": None,             # reinit | probe | keep; default: probe for lp-ft, reinit otherwise
    "head_type": "linear",    # linear | cosine
    "scale": None,            # cosine head scale (default: Chen et al.'s rule)
    "probe": "logistic",      # linear probe: logistic | torch
    "C": 1.0,                 # logistic regression inverse L2 strength
    "probe_lr": 0.01,
    "probe_steps": 100,
    "normalize": False,       # L2-normalise features before a linear probe / head
    "k": None,                # freeze-k: frozen bottom blocks (default: half of them)
    "decay": 0.5,             # discriminative: per-block learning-rate factor
    "unfreeze_every": None,   # gradual-unfreeze: steps between unfreezing blocks
    "block": -1,              # surgical: the one block tuned (negative counts from the top)
    "blocks": None,           # names of sub-modules to use as blocks, bottom to top
    "bn": "eval",             # eval | batch
    "cv": False,
    "cv_grid": None,
    "cv_folds": 5,
    "seed": 0,
}


class _Normalized(nn.Module):
    """A head applied to L2-normalised features."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(F.normalize(features, dim=1))


def _optimizer(kind: str, groups: list[dict], momentum: float = 0.9, dampening: float = 0.0,
               weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum, dampening=dampening,
                               weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=groups[0]["lr"], weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer '{kind}'; choose one of: {', '.join(OPTIMIZERS)}")


class FineTune(Method):
    """Adapt ``backbone`` to each task's support set with a transfer ``strategy``.

    ``source_head`` is the source model's own head (for ``head="keep"``). Options are
    those of :data:`DEFAULTS`; :meth:`set_test_options` changes them later. After each
    :meth:`adapt`, ``last_fit`` describes what was done (trainable parameters, learning
    rates per group, the unfreezing events, the cross-validation scores and choice).
    """

    name = "finetune"
    trainable = False

    def __init__(self, backbone: nn.Module, strategy: str = "finetune", *, source_head: nn.Module | None = None,
                 **options: Any):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise ConfigError(f"the backbone must be an nn.Module, got {type(backbone).__name__}")
        self.backbone = backbone
        self.source_head = source_head
        self._options: dict[str, Any] = dict(DEFAULTS)
        self.set_test_options(strategy=strategy, **options)
        self.last_fit: dict[str, Any] = {}
        self.train(backbone.training)  # mirror the shared backbone's mode, so evaluate() restores it as it was

    # -- options -----------------------------------------------------------------------

    def options(self) -> dict:
        return {k: v for k, v in self._options.items() if v != DEFAULTS[k] or k == "strategy"}

    def set_test_options(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"finetune takes no option {', '.join(unknown)}; it takes: {', '.join(DEFAULTS)}")
        merged = {**self._options, **options}
        self._validate(merged)
        self._options = merged

    @property
    def strategy(self) -> str:
        return self._options["strategy"]

    def _validate(self, o: dict[str, Any]) -> None:
        choices = {"strategy": STRATEGIES, "head_type": HEAD_TYPES, "probe": PROBES, "bn": BN_MODES,
                   "optimizer": OPTIMIZERS}
        for key, allowed in choices.items():
            if o[key] not in allowed:
                raise ConfigError(f"unknown {key.replace('_', ' ')} '{o[key]}'; choose one of: {', '.join(allowed)}")
        if o["head"] is not None and o["head"] not in HEADS:
            raise ConfigError(f"unknown head '{o['head']}'; choose one of: {', '.join(HEADS)}")
        if o["strategy"] == "lp-ft" and o["head"] not in (None, "probe"):
            raise ConfigError("lp-ft starts fine-tuning from the linear probe's head; leave head unset (or 'probe')")
        if o["head"] == "keep" and self.source_head is None:
            raise ConfigError("head=keep needs the source model's head, and this backbone came without one; "
                              "use head=reinit or head=probe")
        for key in ("lr", "probe_lr", "backbone_lr_scale"):
            if not (isinstance(o[key], (int, float)) and o[key] > 0):
                raise ConfigError(f"finetune {key} must be a positive number, got {o[key]!r}")
        if o["backbone_lr"] is not None and not (isinstance(o["backbone_lr"], (int, float)) and o["backbone_lr"] >= 0):
            raise ConfigError(f"finetune backbone_lr must be a non-negative number, got {o['backbone_lr']!r}")
        for key in ("steps", "probe_steps"):
            if not isinstance(o[key], int) or isinstance(o[key], bool) or o[key] < 0:
                raise ConfigError(f"finetune {key} must be a non-negative integer, got {o[key]!r}")
        if not (isinstance(o["decay"], (int, float)) and 0 < o["decay"] <= 1):
            raise ConfigError(f"finetune decay must lie in (0, 1], got {o['decay']!r}")
        if o["head_type"] == "cosine" and o["probe"] == "logistic" and (o["strategy"] == "linear-probe" or
                                                                        o["head"] == "probe" or o["strategy"] == "lp-ft"):
            o["probe"] = "torch"  # logistic regression fits a linear head only
        if o["cv_grid"] is not None:
            if not isinstance(o["cv_grid"], dict) or not o["cv_grid"]:
                raise ConfigError("cv_grid must map option names to lists of values, e.g. {\"lr\": [0.001, 0.01]}")
            bad = sorted(k for k in o["cv_grid"] if k not in DEFAULTS or k in UNTUNABLE)
            if bad:
                raise ConfigError(f"cv_grid names unknown or untunable options: {', '.join(bad)}")

    # -- the Method interface ----------------------------------------------------------------

    def loss(self, episodes):
        raise ConfigError("finetune is adapt-only: it learns nothing across tasks. Pre-train or meta-train a "
                          "backbone (e.g. `fewshot train baseline`), then evaluate it with --adapt STRATEGY")

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        options = dict(self._options)
        with torch.enable_grad():
            if options["cv"]:
                chosen, report = self._cross_validate(support_x, support_y, way, options)
                options.update(chosen)
            else:
                report = None
            net, head, info = self.fit(support_x, support_y, way, options)
        if report is not None:
            info["cv"] = report
        self.last_fit = info
        return lambda query_x: head(net(query_x))

    # -- fitting -----------------------------------------------------------------------

    def _resolved(self, options: dict[str, Any]) -> dict[str, Any]:
        o = dict(options)
        if o["head"] is None:
            o["head"] = "probe" if o["strategy"] == "lp-ft" else "reinit"
        if o["backbone_lr"] is None:
            o["backbone_lr"] = o["lr"] * o["backbone_lr_scale"]
        return o

    def _features(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(x)

    def _initial_head(self, o: dict[str, Any], features: torch.Tensor, y: torch.Tensor, way: int,
                      generator: torch.Generator) -> nn.Module:
        d = features.shape[1]
        if o["head"] == "keep":
            head = copy.deepcopy(self.source_head)
            with torch.no_grad():
                out = head(features[:2])
            if out.ndim != 2 or out.shape[1] != way:
                raise ConfigError(f"head=keep: the source head gives {tuple(out.shape[1:])} outputs, the task has "
                                  f"{way} classes; use head=reinit or head=probe")
            return head
        if o["head"] == "probe" or o["strategy"] == "linear-probe":
            return self._probe(o, features, y, way, generator)
        head = new_head(o["head_type"], d, way, generator=generator, scale=o["scale"])
        return _Normalized(head) if o["normalize"] and o["head_type"] == "linear" else head

    def _probe(self, o: dict[str, Any], features: torch.Tensor, y: torch.Tensor, way: int,
               generator: torch.Generator) -> nn.Module:
        normalize = o["normalize"] and o["head_type"] == "linear"
        inputs = F.normalize(features, dim=1) if normalize else features
        if o["probe"] == "logistic" and o["head_type"] == "linear":
            head = logistic_probe(inputs, y, way, o["C"])
        else:
            head = new_head(o["head_type"], features.shape[1], way, generator=generator, scale=o["scale"])
            train_head(head, inputs, y, epochs=o["probe_steps"], lr=o["probe_lr"], optimizer="adam",
                       weight_decay=o["weight_decay"], generator=generator)
        return _Normalized(head) if normalize else head

    def fit(self, x: torch.Tensor, y: torch.Tensor, way: int, options: dict[str, Any] | None = None,
            checkpoints: Sequence[int] = (), on_checkpoint: Callable | None = None):
        """Adapt a copy of the backbone to ``(x, y)``; returns ``(net, head, info)``.

        ``options`` default to the method's own (no cross-validation here: :meth:`adapt`
        does it). ``on_checkpoint(step, net, head)`` is called after each step listed in
        ``checkpoints``. ``info`` says what was done: ``blocks``, ``trainable`` (blocks
        tuned from the start), ``groups`` (name, learning rate, parameter names),
        ``unfrozen`` ((step, block) events), ``initial_head`` (its weights at the start).
        """
        o = self._resolved(self._options if options is None else options)
        generator = torch.Generator().manual_seed(int(o["seed"]))
        net = copy.deepcopy(self.backbone)
        net.train(o["bn"] == "batch")
        for p in net.parameters():
            p.requires_grad_(False)
        blocks = split_blocks(net, o["blocks"])
        n = len(blocks)
        info: dict[str, Any] = {"strategy": o["strategy"], "head": o["head"], "blocks": [b.name for b in blocks]}
        features = self._features(net, x)
        head = self._initial_head(o, features, y, way, generator)
        info["initial_head"] = {k: v.detach().clone() for k, v in head.state_dict().items()}
        if o["strategy"] == "linear-probe":
            info.update(trainable=[], groups=[], unfrozen=[])
            for c in checkpoints:
                on_checkpoint(c, net, head)
            return net, head, info

        # Which blocks learn, at which rate, and when they join.
        schedule: list[tuple[int, int]] = []
        if o["strategy"] in ("finetune", "lp-ft"):
            tuned = list(range(n))
        elif o["strategy"] == "freeze-k":
            k = n // 2 if o["k"] is None else int(o["k"])
            if not 0 <= k <= n:
                raise ConfigError(f"freeze-k: k must lie in 0..{n} (the backbone has {n} blocks), got {k}")
            tuned = list(range(k, n))
        elif o["strategy"] == "surgical":
            b = int(o["block"])
            if not -n <= b < n:
                raise ConfigError(f"surgical: block must lie in {-n}..{n - 1} (the backbone has {n} blocks), got {b}")
            tuned = [b % n]
        elif o["strategy"] == "gradual-unfreeze":
            tuned = list(range(n))
            schedule = gradual_schedule(n, o["steps"], o["unfreeze_every"])
        else:  # discriminative
            tuned = list(range(n))
        rates = (discriminative_rates(n, o["backbone_lr"], o["decay"]) if o["strategy"] == "discriminative"
                 else [o["backbone_lr"]] * n)
        groups = [{"params": list(head.parameters()), "lr": o["lr"], "name": "head"}]
        groups += [{"params": blocks[i].params, "lr": rates[i], "name": f"block{i}:{blocks[i].name}"}
                   for i in tuned if blocks[i].params]
        for p in head.parameters():
            p.requires_grad_(True)
        # Gradual unfreezing starts with the head alone; blocks whose turn never comes stay frozen.
        active = set() if o["strategy"] == "gradual-unfreeze" else set(tuned)
        pending = sorted(schedule)
        for i in active:
            for p in blocks[i].params:
                p.requires_grad_(True)
        names = {id(p): f"backbone.{n}" for n, p in net.named_parameters()}
        names.update({id(p): f"head.{n}" for n, p in head.named_parameters()})
        info.update(trainable=sorted(active), unfrozen=[],
                    groups=[(g["name"], g["lr"], [names[id(p)] for p in g["params"]]) for g in groups])

        opt = _optimizer(o["optimizer"], groups, weight_decay=o["weight_decay"])
        runner = _sequential_runner(net) if all(b.child is not None for b in blocks) else None
        cache: dict[int, torch.Tensor] = {}
        checkpoints = sorted(set(int(c) for c in checkpoints))
        if 0 in checkpoints:
            on_checkpoint(0, net, head)
        for step in range(o["steps"]):
            while pending and pending[0][0] <= step:
                _, b = pending.pop(0)
                for p in blocks[b].params:
                    p.requires_grad_(True)
                active.add(b)
                info["unfrozen"].append((step, b))
            index = (torch.randperm(len(x), generator=generator)[: o["batch_size"]] if o["batch_size"]
                     else slice(None))
            if runner is not None and o["batch_size"] is None:
                lowest = min((blocks[b].child for b in active), default=runner.length)  # type: ignore[attr-defined]
                if lowest not in cache:  # the frozen bottom of the network, computed once per stage
                    with torch.no_grad():
                        cache.clear()
                        cache[lowest] = runner(x, 0, lowest)
                feats = runner(cache[lowest], lowest, runner.length)  # type: ignore[attr-defined]
            else:
                feats = net(x[index])
            loss = F.cross_entropy(head(feats), y[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step + 1 in checkpoints:
                on_checkpoint(step + 1, net, head)
        info["final_loss"] = float(loss.detach()) if o["steps"] else None
        return net, head, info

    # -- cross-validation --------------------------------------------------------------

    def _grid(self, o: dict[str, Any]) -> dict[str, list]:
        if o["cv_grid"]:
            return {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in o["cv_grid"].items()}
        if o["strategy"] == "linear-probe":
            if o["probe"] == "logistic" and o["head_type"] == "linear":
                return {"C": [0.01, 0.1, 1.0, 10.0, 100.0]}
            return {"probe_lr": [o["probe_lr"] / 10, o["probe_lr"], o["probe_lr"] * 10]}
        return {"lr": [o["lr"] / 10, o["lr"], o["lr"] * 10], "steps": sorted({max(1, o["steps"] // 2), o["steps"]})}

    def _cross_validate(self, x: torch.Tensor, y: torch.Tensor, way: int, options: dict[str, Any]):
        """The grid setting with the best held-out accuracy (ties: lower held-out loss, then grid order)."""
        grid = self._grid(options)
        keys = list(grid)
        settings = [dict(zip(keys, values)) for values in _product([grid[k] for k in keys])]
        folds = cv_folds(y, options["cv_folds"])
        generator = torch.Generator().manual_seed(int(options["seed"]) + 1)
        parts = []
        for train, held in folds:
            real, copies = train[train >= 0], [-1 - int(i) for i in train[train < 0]]
            tx = torch.cat([x[real]] + [_augment(x[i], generator)[None] for i in copies])
            ty = torch.cat([y[real]] + [y[i:i + 1] for i in copies])
            parts.append((tx, ty, x[held], y[held]))
        # Settings that differ only in "steps" share one training run per fold, scored at
        # each step count (not for gradual unfreezing, whose schedule depends on steps).
        share = "steps" in grid and options["strategy"] != "linear-probe" and not (
            options["strategy"] == "gradual-unfreeze" and options["unfreeze_every"] is None)
        runs: dict[tuple, list[int]] = {}
        for i, s in enumerate(settings):
            rest = tuple((k, v) for k, v in s.items() if not (share and k == "steps"))
            runs.setdefault(rest, []).append(i)
        results: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(settings))}
        for rest, members in runs.items():
            trial = {**options, **dict(rest), "cv": False}
            at: dict[int, list[int]] = {}
            for i in members:
                at.setdefault(int(settings[i]["steps"]) if share else int(trial["steps"]), []).append(i)
            if share:
                trial["steps"] = max(at)
            for tx, ty, hx, hy in parts:
                def score(step, net, head, tx=tx, hx=hx, hy=hy, bn=trial["bn"]):
                    with torch.no_grad():
                        if bn == "batch":  # transductive: the held-out examples with the training part
                            logits = head(net(torch.cat([tx, hx])))[len(tx):]
                        else:
                            logits = head(net(hx))
                    for i in at.get(step, []):
                        results[i].append((accuracy(logits, hy), float(F.cross_entropy(logits, hy))))
                if trial["strategy"] == "linear-probe":
                    net, head, _ = self.fit(tx, ty, way, trial)
                    score(int(trial["steps"]), net, head)
                else:
                    self.fit(tx, ty, way, trial, checkpoints=list(at), on_checkpoint=score)
        table = [{"setting": s, "accuracy": float(np.mean([a for a, _ in results[i]])),
                  "loss": float(np.mean([l for _, l in results[i]]))} for i, s in enumerate(settings)]
        best = min(range(len(table)), key=lambda i: (-table[i]["accuracy"], table[i]["loss"], i))
        return settings[best], {"folds": len(folds), "scores": table, "chosen": settings[best]}


def _product(lists: list[list]) -> list[tuple]:
    out: list[tuple] = [()]
    for values in lists:
        out = [t + (v,) for t in out for v in values]
    return out


# -- entry points -----------------------------------------------------------------------------

def wrap(source: Any, strategy: str = "finetune", **options: Any) -> FineTune:
    """A :class:`FineTune` around ``source``'s backbone.

    ``source`` may be a method (its ``backbone``, and its ``head`` for ``head="keep"``;
    Baseline++ brings a cosine head type, and a method evaluated in train mode, like the
    MAML family, brings ``bn="batch"``), a :class:`~fewshot.models.pretrained.Pretrained`,
    a plain ``nn.Module`` (the backbone itself), or a path: a run folder of
    ``fewshot train`` or a pre-trained model file saved by ``save_pretrained``.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if (path / "state.json").exists():
            return from_run(path, strategy, **options)
        from ..models.pretrained import load_pretrained

        source = load_pretrained(path)
    if isinstance(source, FineTune):
        merged = {**source._options, **options}
        merged.pop("strategy")
        return FineTune(source.backbone, strategy, source_head=source.source_head, **merged)
    from ..models.pretrained import Pretrained

    defaults: dict[str, Any] = {}
    head = None
    if isinstance(source, Pretrained):
        backbone, head = source.backbone, source.head
        if isinstance(head, CosineHead):
            defaults["head_type"] = "cosine"
    elif isinstance(source, Method):
        backbone = getattr(source, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ConfigError(f"method '{source.name}' has no backbone to adapt; train one that has "
                              f"(e.g. `fewshot train baseline` or `fewshot train protonet`)")
        head = getattr(source, "head", None)
        head = head if isinstance(head, nn.Module) else None
        if isinstance(head, CosineHead):
            defaults["head_type"] = "cosine"
        if getattr(source, "test_mode", "eval") == "train":
            defaults["bn"] = "batch"
    elif isinstance(source, nn.Module):
        backbone = source
    else:
        raise ConfigError(f"cannot adapt a {type(source).__name__}: give a method, a backbone (nn.Module), "
                          f"a run folder or a pre-trained model file")
    return FineTune(backbone, strategy, source_head=head, **{**defaults, **options})


def from_run(run_dir: str | Path, strategy: str = "finetune", which: str = "best", **options: Any) -> FineTune:
    """The backbone of a ``fewshot train`` run (any method), wrapped for ``strategy``."""
    from ..train import load_run

    _, method, _ = load_run(run_dir, which)
    return wrap(method, strategy, **options)


def adapt_method(method: Method, strategy: str, **options: Any) -> Method:
    """What ``fewshot evaluate RUN --adapt STRATEGY [-o KEY=VALUE ...]`` evaluates.

    ``strategy`` is one of :data:`STRATEGIES`, or ``"default"``/``"none"`` for the method's
    own adaptation (then ``options`` go to its ``set_test_options``). Unknown strategies
    and options raise :class:`~fewshot.errors.ConfigError` naming the valid ones.
    """
    if strategy in (None, "", "default", "none"):
        method.set_test_options(**options)
        return method
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown adaptation strategy '{strategy}'; choose one of: {', '.join(STRATEGIES)}")
    return wrap(method, strategy, **options)


__all__ = ["BN_MODES", "Block", "CosineHead", "FineTune", "HEADS", "STRATEGIES", "adapt_method", "cv_folds",
           "discriminative_rates", "from_run", "gradual_schedule", "logistic_probe", "new_head", "split_blocks",
           "train_head", "wrap"]
