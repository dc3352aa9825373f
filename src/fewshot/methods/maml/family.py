"""The MAML family's declaration: MAML, FOMAML, Meta-SGD and ANIL, and their options.

:data:`OPTIONS` says what each of MAML's options may hold (Reptile and MAML++, built on
MAML, extend it). :class:`MAML` is the constructor, the model (backbone and head) and
the meta-training step; it runs the inner loop of :mod:`.adaptation` over the tasks by
the task-batched path (:mod:`.batched`) or the per-task one (:mod:`.per_task`).

**The head.** Classification adds ``nn.Linear(features, way)`` on the backbone, learned
like every other parameter (Finn et al.). ``way`` is the training way, passed by the
trainer. A task with fewer classes adapts the first ``way`` rows of the head (e.g. a
20-way model evaluated 5-way); a task with more classes than the head has rows is
refused with a message saying to train with that way. ``task="regression"`` (the
sinusoid of Finn et al.) adds no head: the backbone is the whole model
(``MLP(1, (40, 40), out_features=1)``) and the loss is the mean squared error.

**Meta-gradient, chunk by chunk.** :meth:`MAML.loss` computes the meta-gradient of
each chunk of tasks (:meth:`MAML._chunks`: at most ``task_chunk`` tasks; by default
cache-sized on a CPU, where large chunks run slower than single tasks, and bounded in
memory elsewhere, :meth:`MAML._auto_chunk`) as soon as its query losses are known and frees that
graph, then returns a scalar equal to the mean query loss whose gradient is the mean
meta-gradient (:func:`~fewshot.models.inner_loop.surrogate_loss`). The trainer's
``loss.backward()`` and optimiser step therefore apply exactly the MAML update, while
peak memory is that of one chunk rather than of the whole meta-batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ...budget import OutOfBudget
from ...data.episodes import Episode
from ...errors import ConfigError
from ...models.backbones import feature_dim
from ...params import Boolean, Integer, OneOf, Optional, Real, checked
from ...models.functional import BATCH_NORM_MODES, FunctionalModule
from ...models.inner_loop import surrogate_loss
from ...models.task_batched import TaskBatched, Unbatchable
from ...taskkind import task_kind
from ..base import Method, register
from .adaptation import Adaptation
from .batched import TaskBatching
from .per_task import PerTask

TASKS = ("classification", "regression")
# The inner learning rate when none is given: Finn et al. (2017) use 0.4 for 5-way
# Omniglot (appendix A.1) and 0.01 for sinusoid regression (section 5.1).
DEFAULT_INNER_LR = {"classification": 0.4, "regression": 0.01}
DEFAULT_IMAGE_SHAPE = (1, 28, 28)

POSITIVE = Real(low=0, open_low=True)
#: What each of MAML's options may hold (its switches true or false, never 0 or 1).
OPTIONS = {"way": Integer(low=1), "inner_steps": Integer(low=0), "inner_lr": Optional(POSITIVE),
           "first_order": Optional(Boolean()), "learn_inner_lr": Boolean(), "test_inner_steps": Optional(Integer(low=0)),
           "task": OneOf(*TASKS), "in_features": Optional(Integer(low=1)), "batch_norm": OneOf(*BATCH_NORM_MODES),
           "task_batching": Boolean(), "task_chunk": Optional(Integer(low=1)),
           "boil": Boolean()}


@torch.no_grad()
def _feature_dim(backbone: nn.Module, image_shape: Sequence[int]) -> int:
    """``feature_dim`` in the backbone's own dtype and device."""
    first = next(iter(backbone.parameters()), None)
    if first is None or first.dtype == torch.float32 and first.device.type == "cpu":
        return feature_dim(backbone, image_shape)
    was_training = backbone.training
    backbone.eval()
    try:
        out = backbone(torch.zeros(2, *image_shape, dtype=first.dtype, device=first.device))
    finally:
        backbone.train(was_training)
    if out.ndim != 2:
        raise ConfigError(f"backbone must return (batch, features); it returned shape {tuple(out.shape)}")
    return int(out.shape[1])


@register
class MAML(TaskBatching, PerTask, Adaptation, Method):
    """Model-Agnostic Meta-Learning (see the docstring of the package fewshot.methods.maml).

    Options: ``way`` (rows of the head: the training way), ``inner_steps`` (training
    inner steps; 0 trains the plain joint model, the "pretrained" baseline of Finn et
    al.), ``inner_lr`` (default 0.4, or 0.01 for regression), ``first_order``, ``learn_inner_lr`` (per-step, per-tensor
    learned rates), ``test_inner_steps`` (default: ``inner_steps``), ``task``
    (``classification`` / ``regression``), ``image_shape`` or ``in_features`` (to size
    the head; the trainer passes ``image_shape``, and without either a dry run on a
    1x28x28 input decides), ``batch_norm`` (``task`` / ``running``), ``task_batching`` (meta-train
    the tasks of a meta-batch as one batched computation, default on; see
    :meth:`loss`), ``task_chunk`` (at most this many tasks per batched computation;
    default: by input size, :meth:`_chunks`) and ``boil`` (BOIL, Oh et al. 2021,
    arXiv:2008.08882: the inner loop adapts the body, the head stays as meta-learned).
    """

    name = "maml"
    test_mode = "train"
    _parameter_constraints = OPTIONS
    tasks = TASKS
    #: Names of the parameters the inner loop adapts: "all", "head" (ANIL) or "body" (BOIL).
    adapts = "all"
    #: ``first_order`` when the option is not given.
    default_first_order = False
    #: SGD momentum of the inner loop (0: plain SGD; Reptile makes it an option).
    inner_momentum = 0.0

    def __init__(self, backbone: nn.Module, way: int = 5, inner_steps: int = 1, inner_lr: float | None = None,
                 first_order: bool | None = None, learn_inner_lr: bool = False, test_inner_steps: int | None = None,
                 task: str = "classification", image_shape: Sequence[int] | None = None,
                 in_features: int | None = None, batch_norm: str = "task", task_batching: bool = True,
                 task_chunk: int | None = None, boil: bool = False):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise ConfigError(f"{self.name} needs a backbone module, got {type(backbone).__name__}")
        first_order = self.default_first_order if first_order is None else first_order
        if self.default_first_order and first_order is not True:
            raise ConfigError(f"{self.name} is first-order by definition; use maml for the second-order meta-gradient")
        self.way, self.inner_steps, self.test_inner_steps = way, inner_steps, test_inner_steps
        self.inner_lr = DEFAULT_INNER_LR[task] if inner_lr is None else inner_lr
        self.first_order, self.learn_inner_lr, self.task = first_order, learn_inner_lr, task
        self.batch_norm = batch_norm
        self.task_batching = task_batching
        if boil:
            if self.adapts != "all":
                raise ConfigError(f"{self.name} adapts the {self.adapts} only; boil (the body only) does not apply")
            self.adapts = "body"
        self.boil = boil
        self.task_chunk = task_chunk
        self.image_shape = tuple(int(s) for s in image_shape) if image_shape is not None else None
        self.backbone = backbone
        self.head: nn.Linear | None = None
        # Set when the head was sized by a dry run on a guessed input shape: inputs of any
        # other shape are refused in one line (see _check_input), not by a matmul error.
        self._guessed_shape: tuple[int, ...] | None = None
        if task_kind(task).logits:  # a head of `way` logits
            if in_features is None:
                shape = self.image_shape or DEFAULT_IMAGE_SHAPE
                if self.image_shape is None:
                    self._guessed_shape = tuple(shape)
                try:
                    in_features = _feature_dim(backbone, shape)
                except ConfigError:
                    raise
                except Exception as e:  # the dry run failed: the input shape is wrong for this backbone
                    raise ConfigError(f"{self.name} could not size its head by a dry run of the backbone on a "
                                      f"{'x'.join(map(str, shape))} input ({type(e).__name__}: {e}); pass "
                                      f"image_shape=(c, h, w) or in_features=N") from None
            if not OPTIONS["in_features"].accepts(in_features):  # the dry run's width
                raise ConfigError(f"{self.name} 'in_features' must be a positive integer, got {in_features!r}")
            self.in_features = in_features
            self.head = nn.Linear(self.in_features, self.way)
        else:
            self.in_features = in_features
        self._fmodel = FunctionalModule(self, self.batch_norm)
        self._adapted = self._adapted_names()
        self._batched: TaskBatched | None = None
        #: Why meta-training runs task by task rather than task-batched (None: batched).
        self.unbatched_reason: str | None = None
        self._init_learned_rates()
        self._test_lr: float | None = None

    # -- structure ---------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The predictor: logits (classification) or predictions (regression)."""
        features = self.backbone(x)
        return self.head(features) if self.head is not None else features

    def _head_module(self) -> tuple[str, nn.Module]:
        """``(name prefix, module)`` of the head: the classification head, or for
        regression the last layer of a sequential backbone."""
        if self.head is not None:
            return "head.", self.head
        if isinstance(self.backbone, nn.Sequential) and len(self.backbone) > 1:
            last = len(self.backbone) - 1
            if any(True for _ in self.backbone[last].parameters()):
                return f"backbone.{last}.", self.backbone[last]
        raise ConfigError(f"{self.name} with task='regression' needs an nn.Sequential backbone whose last layer "
                          "has parameters (the head)")

    def _adapted_names(self) -> list[str]:
        names = [n for n, p in self.named_parameters() if n.startswith(("backbone.", "head.")) and p.requires_grad]
        if self.adapts in ("head", "body"):
            prefix, _ = self._head_module()
            names = [n for n in names if n.startswith(prefix) == (self.adapts == "head")]
        if not names:
            raise ConfigError(f"{self.name} has no trainable parameters to adapt")
        return names

    # -- test-time options ---------------------------------------------------------------

    def set_test_options(self, inner_steps: int | None = None, inner_lr: float | None = None, **options) -> None:
        """Test-time ``inner_steps`` and, for fixed rates, ``inner_lr``."""
        if options:
            raise ConfigError(f"{self.name} takes no test-time option {', '.join(sorted(options))}; "
                              "it takes inner_steps and inner_lr")
        if inner_steps is not None:
            self.test_inner_steps = checked(self.name, "inner_steps", inner_steps, Integer(low=0))
        if inner_lr is not None:
            if self._learns_rates():
                raise ConfigError(f"{self.name} learned its inner learning rates; a test-time inner_lr would replace them")
            self._test_lr = checked(self.name, "inner_lr", inner_lr, POSITIVE)

    # -- meta-training -------------------------------------------------------------------

    def _meta_gradients(self, chunks: list[list[Episode]], meta: list[nn.Parameter], want_grad: bool,
                        create_graph: bool) -> tuple[list[torch.Tensor], list[float], list[torch.Tensor | None]]:
        """Each chunk's query losses and metrics, and (``want_grad``) the sum over
        chunks of their meta-gradients, each taken as soon as its chunk is done."""
        total: list[torch.Tensor | None] = [None] * len(meta)
        values, metrics = [], []
        scale = 1.0 / sum(len(chunk) for chunk in chunks)
        for chunk in chunks:
            with torch.enable_grad():
                if len(chunk) > 1:
                    losses, outs = self._chunk_loss(chunk, create_graph)
                else:
                    loss, out = self._episode_loss(chunk[0], create_graph)
                    losses, outs = loss.unsqueeze(0), out.unsqueeze(0)
                if want_grad:
                    grads = torch.autograd.grad(losses.sum() * scale, meta, allow_unused=True)
                    for i, g in enumerate(grads):
                        if g is not None:
                            total[i] = g.clone() if total[i] is None else total[i].add_(g)
            values.append(losses.detach())
            metrics += [self._metric(out, ep.query_y) for out, ep in zip(outs.detach(), chunk)]
        return values, metrics, total

    def _restart(self) -> None:
        """Forget what a meta-iteration abandoned half-way had gathered (MAML++'s statistics)."""

    def _meta_params(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _create_graph(self) -> bool:
        """Whether this meta-iteration differentiates through the inner steps (second order)."""
        return not self.first_order

    def loss(self, episodes: Sequence[Episode]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean query loss after the inner loop; its gradient is the mean meta-gradient.

        The tasks run in task-batched chunks (:meth:`_chunks`, :class:`TaskBatched`),
        or one by one when the model holds a layer the batched path does not know
        (``unbatched_reason``). Each chunk's meta-gradient is computed
        (``torch.autograd.grad``) right after its query losses and its graph freed; the
        returned scalar carries their mean to the trainer's ``backward()`` (see
        :func:`~fewshot.models.inner_loop.surrogate_loss`). Called under
        ``torch.no_grad()``, it only measures the loss. Inside a training step's CPU
        deadline (:mod:`fewshot.budget`), the inner loops raise
        :class:`~fewshot.budget.OutOfBudget` once the budget is spent.
        """
        if not episodes:
            raise ConfigError(f"{self.name}.loss needs at least one episode")
        self._check_input(episodes[0].support_x)
        meta = self._meta_params()
        want_grad = torch.is_grad_enabled()
        create_graph = want_grad and self._create_graph()
        batched = self._batched_model() is not None
        try:
            try:
                values, metrics, total = self._meta_gradients(
                    self._chunks(episodes) if batched else [[ep] for ep in episodes], meta, want_grad, create_graph)
            except Unbatchable as e:
                # A use of a layer the static check could not see (a Linear on 3-d input):
                # this model runs the per-task loop from now on, starting with this batch.
                self._batched, self.unbatched_reason = None, str(e)
                self._restart()
                values, metrics, total = self._meta_gradients([[ep] for ep in episodes], meta, want_grad,
                                                              create_graph)
        except OutOfBudget:  # the trainer abandons this meta-iteration: nothing of it is kept
            self._restart()
            raise
        value = torch.cat(values).mean()
        summary = self._summary(metrics)
        if not want_grad:
            return value, summary
        return surrogate_loss(value, meta, total), summary

    def _metric(self, out: torch.Tensor, y: torch.Tensor) -> float:
        return task_kind(self.task).score(out, y)

    def _summary(self, metrics: list[float]) -> dict[str, float]:
        return {task_kind(self.task).metric: sum(metrics) / len(metrics)}

    def _check_input(self, x: torch.Tensor) -> None:
        if self._guessed_shape is not None and tuple(x.shape[1:]) != self._guessed_shape:
            shape = "x".join(map(str, self._guessed_shape))
            raise ConfigError(f"{self.name} sized its head by a dry run of the backbone on {shape} input, but it is "
                              f"given {'x'.join(map(str, x.shape[1:]))} inputs; pass "
                              f"image_shape={tuple(x.shape[1:])} (or in_features=N) when you build it")


@register
class FOMAML(MAML):
    """First-order MAML: ``MAML(first_order=True)``; the inner gradients are constants."""

    name = "fomaml"
    default_first_order = True


@register
class MetaSGD(MAML):
    """Meta-SGD: a learned inner learning rate for every parameter element.

    The rates start at ``inner_lr`` and are learned with the initialisation; Li et al.
    adapt in one step (the default). Second-order by default; with
    ``first_order=True`` the rates still learn (their gradient needs no second order).
    """

    name = "metasgd"

    def _init_learned_rates(self) -> None:
        self.step_lrs = None
        params = dict(self.named_parameters())
        self.inner_lrs = nn.ParameterList(
            [nn.Parameter(torch.full_like(params[n], self.inner_lr)) for n in self._adapted])

    def _learns_rates(self) -> bool:
        return True

    def _lrs(self, step: int, detach: bool, test: bool = False) -> list[torch.Tensor | float]:
        return [lr.detach() for lr in self.inner_lrs] if detach else list(self.inner_lrs)


@register
class ANIL(MAML):
    """Almost No Inner Loop: the inner loop adapts the head only.

    The body's features of the support and the query sets are computed once per task
    (each set normalised with its own statistics, as in MAML) and the inner steps run
    on the head alone, so an inner step costs a linear layer. The body learns in the
    outer loop through the adapted head (second order by default).
    """

    name = "anil"
    adapts = "head"

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            return FunctionalModule(self.backbone, self.batch_norm)({}, x)
        body = nn.Sequential(*list(self.backbone)[:-1])
        return FunctionalModule(body, self.batch_norm)({}, x)

    def _task_model(self, support_x, query_x, params, detach):
        prefix, head = self._head_module()
        head_params = {n: p for n, p in params.items() if n.startswith(prefix)}
        fhead = FunctionalModule(head, self.batch_norm)

        def forward(p: dict, features: torch.Tensor, twice: bool = False) -> torch.Tensor:
            return fhead({n[len(prefix):]: t for n, t in p.items()}, features, twice)

        if detach:
            with torch.no_grad():
                sf = self._body(support_x) if len(support_x) else None
                qf = self._body(query_x) if query_x is not None else None
        else:
            sf = self._body(support_x)
            qf = self._body(query_x) if query_x is not None else None
        return forward, sf, qf, head_params

    def _body_stages(self) -> list[tuple[str, nn.Module]]:
        if self.head is not None:
            return [("backbone.", self.backbone)]
        return [("backbone.", nn.Sequential(*list(self.backbone)[:-1]))]

    def _stages(self) -> list[tuple[str, nn.Module]]:
        prefix, head = self._head_module()
        return self._body_stages() + [(prefix, head)]

    def _batched_task_model(self, support_x, query_x, params, detach):
        """The body's features of all tasks in one task-batched pass (shared weights,
        per-task statistics); the head's inner loop on them as one batched product."""
        prefix, head = self._head_module()
        body = TaskBatched(self._body_stages(), self.batch_norm)
        fhead = TaskBatched([(prefix, head)], self.batch_norm)
        head_params = {n: p for n, p in params.items() if n.startswith(prefix)}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
            sf = body({}, support_x)
            qf = body({}, query_x) if query_x is not None else None
        return fhead, sf, qf, head_params


__all__ = ["ANIL", "DEFAULT_INNER_LR", "FOMAML", "MAML", "MetaSGD", "OPTIONS"]
