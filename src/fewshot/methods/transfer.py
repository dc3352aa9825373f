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
    Kumar et al. (2022, arXiv:2202.10054): a linear probe first, then everything is fine-tuned starting
    from the probe's head (``head="probe"``), which distorts the features less than
    fine-tuning under a random head.
``surgical``
    Lee et al. (2022, arXiv:2210.11466): only one chosen ``block`` (and the head) is tuned: the first for
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

**Blocks.** Freezing works block by block (:mod:`fewshot.models.blocks`); pass
``blocks=[...]`` (names of sub-modules, bottom to top) to split a network your own way.
Each strategy is a plan over those blocks in :mod:`fewshot.methods.strategies`.

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
import itertools
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import jitter
from ..errors import ConfigError
from ..metrics import accuracy
from ..models.blocks import sequential_runner, split_blocks
from ..models.heads import HEAD_TYPES, OPTIMIZERS, CosineHead, NormalizedHead, logistic_probe, make_optimizer, new_head, train_head
from ..models.pretrained import Pretrained
from ..params import STEPS, Boolean, Integer, OneOf, Optional, Real, validate
from .base import Method, Predictor
from .strategies import STRATEGIES
from .testtime_bn import BN_ADAPTATIONS, with_test_time_bn

HEADS = ("reinit", "probe", "keep")
PROBES = ("logistic", "torch")
BN_MODES = ("eval", "batch")
UNTUNABLE = ("strategy", "cv", "cv_grid", "cv_folds", "blocks", "seed")
_POSITIVE = Real(low=0, open_low=True)
#: What each option may hold (the rest are checked where they are used: k and block
#: against the backbone's blocks, cv_grid against the options).
OPTIONS = {
    "strategy": OneOf(*STRATEGIES), "head_type": OneOf(*HEAD_TYPES), "probe": OneOf(*PROBES), "bn": OneOf(*BN_MODES),
    "optimizer": OneOf(*OPTIMIZERS), "head": Optional(OneOf(*HEADS)), "lr": _POSITIVE, "probe_lr": _POSITIVE,
    "backbone_lr_scale": _POSITIVE, "backbone_lr": Optional(Real(low=0)), "steps": STEPS,
    "probe_steps": STEPS, "decay": Real(low=0, high=1, open_low=True), "weight_decay": Real(low=0),
    "batch_size": Optional(Integer(low=1)), "C": _POSITIVE, "normalize": Boolean(), "cv": Boolean(),
    "cv_folds": Integer(low=1), "seed": Integer(), "scale": Optional(_POSITIVE), "k": Optional(Integer(low=0)),
    "unfreeze_every": Optional(Integer(low=1)), "block": Integer(),
}


# -- cross-validation -----------------------------------------------------------------------

def cv_folds(labels: torch.Tensor, max_folds: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds of a support set: ``[(train_index, held_out_index), ...]``.

    With at least 2 examples per class: ``min(max_folds, shot)`` folds, fold ``f`` holding
    out the examples whose rank within their class is ``f`` modulo the fold count, so
    every class is in every training part. At 1 shot: leave-one-out, one fold per
    example (at most ``max_folds``, spread over the classes); the held-out example's
    class would vanish from training, so its training part keeps an augmented copy of
    it (see :func:`~fewshot.data.augment.jitter`); its index is given as ``-1 - i`` in ``train_index``.
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


class FineTune(Method):
    """Adapt ``backbone`` to each task's support set with a transfer ``strategy``.

    ``source_head`` is the source model's own head (for ``head="keep"``). Options are
    those of :data:`DEFAULTS`; :meth:`set_test_options` changes them later. After each
    :meth:`adapt`, ``last_fit`` describes what was done (trainable parameters, learning
    rates per group, the unfreezing events, the cross-validation scores and choice).
    """

    name = "finetune"
    learns_across_tasks = False
    _parameter_constraints = OPTIONS

    def __init__(self, backbone: nn.Module, strategy: str = "finetune", *, source_head: nn.Module | None = None,
                 **options: Any):
        if not isinstance(backbone, nn.Module):
            raise ConfigError(f"the backbone must be an nn.Module, got {type(backbone).__name__}")
        super().__init__(backbone)
        self.source_head = source_head
        self._options: dict[str, Any] = dict(DEFAULTS)
        self.set_test_options(strategy=strategy, **options)
        self.last_fit: dict[str, Any] = {}
        self.train(backbone.training)  # mirror the shared backbone's mode, so evaluate() restores it as it was

    # -- options -----------------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """Its options now (:meth:`set_test_options` changes them) and ``source_head``."""
        return {"source_head": self.source_head, **self._options}

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
        validate(self.name, o, OPTIONS)
        if o["strategy"] == "lp-ft" and o["head"] not in (None, "probe"):
            raise ConfigError("lp-ft starts fine-tuning from the linear probe's head; leave head unset (or 'probe')")
        if o["head"] == "keep" and self.source_head is None:
            raise ConfigError("head=keep needs the source model's head, and this backbone came without one; "
                              "use head=reinit or head=probe")
        if o["head_type"] == "cosine" and o["probe"] == "logistic" and (o["strategy"] == "linear-probe" or
                                                                        o["head"] == "probe" or o["strategy"] == "lp-ft"):
            o["probe"] = "torch"  # logistic regression fits a linear head only
        if o["cv_grid"] is not None:
            if not isinstance(o["cv_grid"], dict) or not o["cv_grid"]:
                raise ConfigError("cv_grid must map option names to lists of values, e.g. {\"lr\": [0.001, 0.01]}")
            bad = sorted(k for k in o["cv_grid"] if k not in DEFAULTS or k in UNTUNABLE)
            if bad:
                raise ConfigError(f"cv_grid names unknown or untunable options: {', '.join(bad)}")
            for name, values in o["cv_grid"].items():  # each candidate bounded as the option is (steps too)
                for value in values if isinstance(values, (list, tuple)) else [values]:
                    validate(f"{self.name} cv_grid", {name: value}, OPTIONS)

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
        return lambda query_x: head(net(query_x).flatten(1))

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
            return net(x).flatten(1)

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
        head = new_head(o["head_type"], d, way, generator=generator, scale=o["scale"], device=features.device)
        return NormalizedHead(head) if o["normalize"] and o["head_type"] == "linear" else head

    def _probe(self, o: dict[str, Any], features: torch.Tensor, y: torch.Tensor, way: int,
               generator: torch.Generator) -> nn.Module:
        normalize = o["normalize"] and o["head_type"] == "linear"
        inputs = F.normalize(features, dim=1) if normalize else features
        if o["probe"] == "logistic" and o["head_type"] == "linear":
            head = logistic_probe(inputs, y, way, o["C"])
        else:
            head = new_head(o["head_type"], features.shape[1], way, generator=generator, scale=o["scale"],
                           device=features.device)
            train_head(head, inputs, y, epochs=o["probe_steps"], lr=o["probe_lr"], optimizer="adam",
                       weight_decay=o["weight_decay"], generator=generator)
        return NormalizedHead(head) if normalize else head

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
        plan = STRATEGIES[o["strategy"]](n, o)
        if not plan.fine_tune:
            info.update(trainable=[], groups=[], unfrozen=[])
            for c in checkpoints:
                on_checkpoint(c, net, head)
            return net, head, info

        groups = [{"params": list(head.parameters()), "lr": o["lr"], "name": "head"}]
        groups += [{"params": blocks[i].params, "lr": plan.rates[i], "name": f"block{i}:{blocks[i].name}"}
                   for i in plan.tuned if blocks[i].params]
        for p in head.parameters():
            p.requires_grad_(True)
        # A scheduled plan starts with the head alone; blocks whose turn never comes stay frozen.
        active = set() if plan.unfreeze else set(plan.tuned)
        pending = sorted(plan.unfreeze)
        for i in active:
            for p in blocks[i].params:
                p.requires_grad_(True)
        names = {id(p): f"backbone.{n}" for n, p in net.named_parameters()}
        names.update({id(p): f"head.{n}" for n, p in head.named_parameters()})
        info.update(trainable=sorted(active), unfrozen=[],
                    groups=[(g["name"], g["lr"], [names[id(p)] for p in g["params"]]) for g in groups])

        opt = make_optimizer(o["optimizer"], groups, weight_decay=o["weight_decay"])
        runner = sequential_runner(net) if all(b.child is not None for b in blocks) else None
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
            index = (torch.randperm(len(x), generator=generator, device="cpu")[: o["batch_size"]].to(x.device) if o["batch_size"]
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
            feats = feats.flatten(1)  # backbones that end in feature maps (a Relation Network's)
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
        settings = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
        folds = cv_folds(y, options["cv_folds"])
        generator = torch.Generator().manual_seed(int(options["seed"]) + 1)
        parts = []
        for train, held in folds:
            real, copies = train[train >= 0], [-1 - int(i) for i in train[train < 0]]
            real_t, held_t = torch.as_tensor(real, device=x.device), torch.as_tensor(held, device=x.device)
            tx = torch.cat([x[real_t]] + [jitter(x[i], generator)[None] for i in copies])
            ty = torch.cat([y[real_t]] + [y[i:i + 1] for i in copies])
            parts.append((tx, ty, x[held_t], y[held_t]))
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
                            logits = head(net(torch.cat([tx, hx])).flatten(1))[len(tx):]
                        else:
                            logits = head(net(hx).flatten(1))
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


# -- entry points -----------------------------------------------------------------------------

def wrap(source: Method | Pretrained | nn.Module, strategy: str = "finetune", **options: Any) -> FineTune:
    """A :class:`FineTune` around ``source``'s backbone.

    ``source`` may be a method (its ``backbone``, and its ``head`` for ``head="keep"``;
    Baseline++ brings a cosine head type, and a method evaluated in train mode, like the
    MAML family, brings ``bn="batch"``), a :class:`~fewshot.models.pretrained.Pretrained`,
    or a plain ``nn.Module`` (the backbone itself). For a run folder or a model file,
    see :func:`fewshot.runs.finetune_from`.
    """
    if isinstance(source, FineTune):
        merged = {**source.get_params(), **options, "strategy": strategy}
        return FineTune(source.backbone, **merged)
    defaults: dict[str, Any] = {}
    head = None
    if isinstance(source, Pretrained):
        backbone, head = source.backbone, source.head
    elif isinstance(source, Method):
        if source.backbone is None:
            raise ConfigError(f"method '{source.name}' has no backbone to adapt; train one that has "
                              f"(e.g. `fewshot train baseline` or `fewshot train protonet`)")
        backbone, head = source.backbone, source.head
        if source.test_mode == "train":
            defaults["bn"] = "batch"
    elif isinstance(source, nn.Module):
        backbone = source
    else:
        raise ConfigError(f"cannot adapt a {type(source).__name__}: give a method, a backbone (nn.Module), "
                          f"a run folder or a pre-trained model file")
    if isinstance(head, CosineHead):
        defaults["head_type"] = "cosine"
    return FineTune(backbone, strategy, source_head=head, **{**defaults, **options})


def adapt_method(method: Method, strategy: str, **options: Any) -> Method:
    """What ``fewshot evaluate RUN --adapt STRATEGY [-o KEY=VALUE ...]`` evaluates.

    ``strategy`` is one of :data:`STRATEGIES`, or ``"default"``/``"none"`` for the method's
    own adaptation (then ``options`` go to its ``set_test_options``). Unknown strategies
    and options raise :class:`~fewshot.errors.ConfigError` naming the valid ones.
    """
    if strategy in (None, "", "default", "none"):
        method.set_test_options(**options)
        return method
    if strategy in BN_ADAPTATIONS:  # test-time BatchNorm statistics (fewshot.methods.testtime_bn)
        method.set_test_options(**options)
        return with_test_time_bn(method, strategy)
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown adaptation strategy '{strategy}'; choose one of: "
                          f"{', '.join([*STRATEGIES, *BN_ADAPTATIONS])}")
    return wrap(method, strategy, **options)


__all__ = ["BN_MODES", "FineTune", "HEADS", "PROBES", "adapt_method", "cv_folds", "wrap"]
