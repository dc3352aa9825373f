"""Gradient-based meta-learning: MAML, first-order MAML, Meta-SGD and ANIL.

* MAML (Finn, Abbeel and Levine, ICML 2017, arXiv:1703.03400): learn an initialisation from which a few
  gradient steps on a task's support set give low loss on its query set. The
  meta-gradient differentiates through the inner steps (second order) unless
  ``first_order=True`` (FOMAML, registered as ``fomaml``), which treats the inner
  gradients as constants. ``learn_inner_lr=True`` learns one inner learning rate per
  step and per parameter tensor (the "LSLR" of Antoniou et al.'s MAML++, 2019).
* Meta-SGD (Li, Zhou, Chen and Li, 2017, arXiv:1707.09835): one learning rate per parameter *element*,
  learned in the outer loop with the initialisation (``metasgd``).
* ANIL (Raghu, Raghu, Bengio and Vinyals, ICLR 2020, arXiv:1909.09157): the inner loop adapts the head
  only; the body is shared by all tasks and learned in the outer loop (``anil``).

Reptile lives in :mod:`fewshot.methods.reptile`, MAML++ (Antoniou et al., 2019,
arXiv:1810.09502) in :mod:`fewshot.methods.mamlpp`. ``boil=True`` makes MAML, FOMAML,
Meta-SGD or MAML++ BOIL (Oh et al., 2021, arXiv:2008.08882): the inner loop adapts the body, not the head.

**Any module.** The inner loop runs the backbone functionally
(:mod:`fewshot.models.functional`): an unmodified ``nn.Module``, pre-trained or not,
with its parameters swapped for the fast weights. BatchNorm normalises every pass with
the statistics of its own batch (one task's support set, or its query set) and never
touches the running statistics (``batch_norm="task"``, the default; ``"running"``
uses the stored statistics instead, frozen).

**The head.** Classification adds ``nn.Linear(features, way)`` on the backbone, learned
like every other parameter (Finn et al.). ``way`` is the training way, passed by the
trainer. A task with fewer classes adapts the first ``way`` rows of the head (e.g. a
20-way model evaluated 5-way); a task with more classes than the head has rows is
refused with a message saying to train with that way. ``task="regression"`` (the
sinusoid of Finn et al.) adds no head: the backbone is the whole model
(``MLP(1, (40, 40), out_features=1)``) and the loss is the mean squared error.

**Task batching.** Meta-training runs the tasks of a meta-batch together
(:class:`~fewshot.models.functional.TaskBatched`): the tasks' fast weights are stacked
``(T, ...)``, their images laid side by side along the channels, every ``Conv2d`` one
grouped convolution over tasks, every ``Linear`` one batched product, BatchNorm with
each task's own statistics. One inner step of T tasks is one pass of a few large
operations instead of T passes of small ones, which is what fills a GPU; the losses and
meta-gradients equal the per-task loop's to float rounding (``tests/test_maml_batched.py``).
A module with a layer the batched path does not know (``unbatched_reason`` names it)
runs the per-task loop instead, so any ``nn.Module`` still works; ``task_batching=False``
asks for the per-task loop.

**Meta-gradient, chunk by chunk.** :meth:`MAML.loss` computes the meta-gradient of
each chunk of tasks (:meth:`MAML._chunks`: at most ``task_chunk`` tasks; by default
cache-sized on a CPU, where large chunks run slower than single tasks, and bounded in
memory elsewhere, :meth:`MAML._auto_chunk`) as soon as its query losses are known and frees that
graph, then returns a scalar equal to the mean query loss whose gradient is the mean
meta-gradient (:func:`~fewshot.models.functional.surrogate_loss`). The trainer's
``loss.backward()`` and optimiser step therefore apply exactly the MAML update, while
peak memory is that of one chunk rather than of the whole meta-batch.

**Evaluation** (:meth:`MAML.adapt`) takes first-order steps from detached weights
under ``torch.enable_grad()``: no second-order graph is built and nothing outlives an
episode, so memory stays flat over a 600-episode suite. ``test_inner_steps`` (or
``fewshot evaluate --inner-steps N``, via :meth:`MAML.set_test_options`) may differ
from the training steps; steps beyond those with a learned rate reuse the last one.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..data.episodes import Episode
from ..errors import ConfigError
from ..models.backbones import feature_dim
from ..params import Boolean, Integer, OneOf, Optional, Real, checked
from ..models.functional import BATCH_NORM_MODES, FunctionalModule
from ..models.inner_loop import sgd_step, surrogate_loss
from ..models.task_batched import TaskBatched, Unbatchable
from ..taskkind import task_kind
from .base import Method, Predictor, register

TASKS = ("classification", "regression")
# The inner learning rate when none is given: Finn et al. (2017) use 0.4 for 5-way
# Omniglot (appendix A.1) and 0.01 for sinusoid regression (section 5.1).
DEFAULT_INNER_LR = {"classification": 0.4, "regression": 0.01}
DEFAULT_IMAGE_SHAPE = (1, 28, 28)

Forward = Callable[..., torch.Tensor]  # (params, x[, twice]) -> outputs
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


def _batched_sgd_step(params: dict, names: Sequence[str], grads: Sequence[torch.Tensor],
                      lrs: Sequence[torch.Tensor | float]) -> dict[str, torch.Tensor]:
    """:func:`~fewshot.models.functional.sgd_step` for task-stacked weights ``(T, ...)``:
    a rate (scalar, or per element as Meta-SGD's) applies to every task alike."""
    out = dict(params)
    for name, grad, lr in zip(names, grads, lrs):
        if torch.is_tensor(lr) and lr.dim() and lr.shape[0] != grad.shape[1]:
            lr = lr[: grad.shape[1]]  # a head sliced to fewer ways: its per-element rates too
        out[name] = params[name] - lr * grad
    return out


@register
class MAML(Method):
    """Model-Agnostic Meta-Learning (see the module docstring).

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

    def _init_learned_rates(self) -> None:
        self.step_lrs = None
        if self.learn_inner_lr:
            # One rate per inner step and parameter tensor (MAML++'s LSLR).
            self.step_lrs = nn.Parameter(torch.full((max(self.inner_steps, 1), len(self._adapted)), self.inner_lr))

    def _lrs(self, step: int, detach: bool, test: bool = False) -> list[torch.Tensor | float]:
        """The inner learning rate of each adapted tensor at ``step`` (``test``: at test time)."""
        if self.step_lrs is None:
            lr = self._test_lr if test and self._test_lr is not None else self.inner_lr
            return [lr] * len(self._adapted)
        row = self.step_lrs[min(step, self.step_lrs.shape[0] - 1)]
        row = row.detach() if detach else row
        return list(row.unbind(0))

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

    def _learns_rates(self) -> bool:
        return self.step_lrs is not None

    # -- the inner loop ------------------------------------------------------------------

    def _task_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_kind(self.task).loss(out, y)

    def _task_losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each task's loss, ``(T,)``, from task-batched outputs ``(T, N, ...)`` and targets ``(T, N)``."""
        return task_kind(self.task).task_losses(out, y)

    def _start(self, way: int, detach: bool) -> dict[str, torch.Tensor]:
        """The initial weights of the predictor for a ``way``-way task (the head sliced to ``way`` rows)."""
        params = {n: p for n, p in self.named_parameters() if n.startswith(("backbone.", "head."))}
        if self.head is not None:
            rows = self.head.out_features
            if way > rows:
                raise ConfigError(f"{self.name} was trained for {rows}-way tasks; its head cannot adapt to {way} "
                                  f"classes (train with --way {way}, or -o way={way})")
            if way < rows:
                params["head.weight"], params["head.bias"] = params["head.weight"][:way], params["head.bias"][:way]
        if detach:
            params = {n: p.detach() for n, p in params.items()}
        return params

    def _task_model(self, support_x: torch.Tensor, query_x: torch.Tensor | None, params: dict,
                    detach: bool) -> tuple[Forward, torch.Tensor, torch.Tensor | None, dict]:
        """What the inner loop runs: ``(forward(params, x), support input, query input,
        adapted-start params)``. MAML runs the whole model on the images."""
        return self._fmodel, support_x, query_x, params

    # -- task batching -----------------------------------------------------------------

    def _stages(self) -> list[tuple[str, nn.Module]]:
        """The predictor as :class:`~fewshot.models.functional.TaskBatched` stages."""
        return [("backbone.", self.backbone)] + ([("head.", self.head)] if self.head is not None else [])

    def _batched_model(self) -> TaskBatched | None:
        """The task-batched predictor, or None when the modules hold a layer it does not
        know (``unbatched_reason`` then says which) or ``task_batching`` is off."""
        if not self.task_batching:
            return None
        if self._batched is None and self.unbatched_reason is None:
            batched = TaskBatched(self._stages(), self.batch_norm)
            if batched.supported:
                self._batched = batched
            else:
                self.unbatched_reason = batched.reason
        return self._batched

    def _batched_task_model(self, support_x: torch.Tensor, query_x: torch.Tensor | None, params: dict,
                            detach: bool) -> tuple[Forward, torch.Tensor, torch.Tensor | None, dict]:
        """:meth:`_task_model` for ``T`` tasks at once: inputs ``(T, N, ...)``, params ``(T, ...)``."""
        return self._batched, support_x, query_x, params

    def _chunks(self, episodes: Sequence[Episode]) -> list[list[Episode]]:
        """Episodes in groups that run as one task-batched computation.

        Tasks batch when their support and query sets have the same shapes (a
        meta-batch always does); a group holds at most ``task_chunk`` tasks, by default
        :meth:`_auto_chunk`. A group of one task runs the per-task loop.
        """
        groups: dict[tuple, list[Episode]] = {}
        for ep in episodes:
            key = (tuple(ep.support_x.shape), None if ep.query_x is None else tuple(ep.query_x.shape), ep.way,
                   ep.support_x.dtype, ep.support_x.device)
            groups.setdefault(key, []).append(ep)
        chunks = []
        for group in groups.values():
            size = self.task_chunk or self._auto_chunk(group[0])
            chunks += [group[i: i + size] for i in range(0, len(group), size)]
        return chunks

    def _auto_chunk(self, ep: Episode) -> int:
        """How many tasks like ``ep`` run at once by default.

        On a CPU, batching pays only while a chunk's activations stay in cache: laid
        side by side, 32 Omniglot tasks with 15 queries per class ran 2x slower than
        one by one (``benchmarks/results/maml_speed_chunks_v1.json``, with the earlier
        channels-first layout). A chunk there holds at most 2^15 input values per
        pass: 8 Omniglot 5-way tasks with one query per class, 2 20-way ones, and a
        task with 15 queries per class runs alone (the per-task loop). On
        other devices (a GPU, which batching is for) the bound is on the chunk's graph
        (every inner step's activations live until its meta-gradient is taken): at
        most 2^22 input values x inner steps, about 14 GB for Conv-4 (3.5 KB of saved
        activations per input value and step, measured on CPU).
        """
        largest = max(ep.support_x.numel(), 0 if ep.query_x is None else ep.query_x.numel())
        if ep.support_x.device.type == "cpu":
            return max(1, (1 << 15) // max(1, largest))
        values = ep.support_x.numel() + (0 if ep.query_x is None else ep.query_x.numel())
        return max(1, (1 << 22) // max(1, values * max(1, self.inner_steps)))

    @staticmethod
    def _stack(params: dict, tasks: int) -> dict[str, torch.Tensor]:
        """Every task starts from the same weights: ``(T, ...)`` views of one tensor."""
        return {n: p.unsqueeze(0).expand(tasks, *p.shape) for n, p in params.items()}

    # -- the inner loop ------------------------------------------------------------------

    def _inner_loop(self, forward: Forward, params: dict, x: torch.Tensor, y: torch.Tensor, steps: int,
                    create_graph: bool, detach: bool, test: bool | None = None, batched: bool = False,
                    first_step: int = 0) -> dict:
        """``steps`` gradient steps on ``(x, y)`` from ``params``.

        ``create_graph`` keeps the graph of the steps (second-order meta-gradient);
        ``detach`` (evaluation) restarts every step from detached leaves, so no graph
        outlives a step. ``test`` (default: ``detach``) applies a test-time ``inner_lr``.
        With ``inner_momentum`` μ > 0 a step follows the velocity ``v ← μ v + g``
        (``v = g`` at the first step), exactly as ``torch.optim.SGD(momentum=μ)``.
        ``batched``: ``forward`` is task-batched, ``x`` is ``(T, N, ...)``, ``y``
        ``(T, N)``, every params entry ``(T, ...)``; the step minimises the sum of the
        tasks' losses, whose gradient with respect to task t's weights is task t's own.
        ``first_step`` numbers the steps (their learned rates; MAML++'s per-step state).
        """
        names = self._adapted
        test = detach if test is None else test
        velocity = None
        for step in range(first_step, first_step + steps):
            if detach:
                params = {n: (p.detach().requires_grad_(True) if n in names else p) for n, p in params.items()}
            at_step = self._step_params(params, step)
            out = forward(at_step, x, create_graph) if create_graph else forward(at_step, x)
            loss = self._task_losses(out, y).sum() if batched else self._task_loss(out, y)
            grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
                if self.inner_momentum:
                    velocity = list(grads) if velocity is None else [
                        v * self.inner_momentum + g for v, g in zip(velocity, grads)]
                    grads = velocity
                lrs = self._lrs(step, detach, test)
                new = _batched_sgd_step(params, names, grads, lrs) if batched else sgd_step(params, names, grads, lrs)
            params = new
        if detach:
            params = {n: p.detach() for n, p in params.items()}
        return params

    def _step_params(self, params: dict, step: int) -> dict:
        """The weights a pass at inner step ``step`` runs with (MAML++ adds per-step BatchNorm weights)."""
        return params

    def _test_steps(self) -> int:
        return self.inner_steps if self.test_inner_steps is None else self.test_inner_steps

    # -- the interface -------------------------------------------------------------------

    def _episode_loss(self, ep: Episode, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Query loss (with its graph) and query outputs of one episode after the inner loop."""
        start = self._start(ep.way, detach=False)
        forward, sx, qx, params = self._task_model(ep.support_x, ep.query_x, start, detach=False)
        fast = self._inner_loop(forward, params, sx, ep.support_y, self.inner_steps, create_graph, detach=False)
        out = forward(self._step_params(fast, max(self.inner_steps - 1, 0)), qx)
        return self._task_loss(out, ep.query_y), out

    def _chunk_loss(self, chunk: Sequence[Episode], create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Each task's query loss ``(T,)`` (with its graph) and query outputs ``(T, M, ...)``
        after the inner loop, for the tasks of ``chunk`` at once."""
        tasks = len(chunk)
        start = self._stack(self._start(chunk[0].way, detach=False), tasks)
        sy = torch.stack([ep.support_y for ep in chunk])
        qy = torch.stack([ep.query_y for ep in chunk])
        forward, sx, qx, params = self._batched_task_model(torch.stack([ep.support_x for ep in chunk]),
                                                           torch.stack([ep.query_x for ep in chunk]), start,
                                                           detach=False)
        fast = self._inner_loop(forward, params, sx, sy, self.inner_steps, create_graph, detach=False, batched=True)
        out = forward(self._step_params(fast, max(self.inner_steps - 1, 0)), qx)
        return self._task_losses(out, qy), out

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
        :func:`~fewshot.models.functional.surrogate_loss`). Called under
        ``torch.no_grad()``, it only measures the loss.
        """
        if not episodes:
            raise ConfigError(f"{self.name}.loss needs at least one episode")
        self._check_input(episodes[0].support_x)
        meta = self._meta_params()
        want_grad = torch.is_grad_enabled()
        create_graph = want_grad and self._create_graph()
        batched = self._batched_model() is not None
        try:
            values, metrics, total = self._meta_gradients(
                self._chunks(episodes) if batched else [[ep] for ep in episodes], meta, want_grad, create_graph)
        except Unbatchable as e:
            # A use of a layer the static check could not see (a Linear on 3-d input):
            # this model runs the per-task loop from now on, starting with this batch.
            self._batched, self.unbatched_reason = None, str(e)
            self._restart()
            values, metrics, total = self._meta_gradients([[ep] for ep in episodes], meta, want_grad, create_graph)
        value = torch.cat(values).mean()
        summary = self._summary(metrics)
        if not want_grad:
            return value, summary
        return surrogate_loss(value, meta, total), summary

    def _metric(self, out: torch.Tensor, y: torch.Tensor) -> float:
        return task_kind(self.task).score(out, y)

    def _summary(self, metrics: list[float]) -> dict[str, float]:
        return {task_kind(self.task).metric: sum(metrics) / len(metrics)}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, way: int) -> Predictor:
        """``self._test_steps()`` first-order steps on the support set; a predictor of the query.

        Runs under ``torch.enable_grad()`` (evaluation calls it under ``no_grad``) from
        detached weights: nothing is kept between steps, or after the episode, but the
        fast weights the predictor closes over.
        """
        self._check_input(support_x)
        with torch.enable_grad():
            start = self._start(way, detach=True)
            forward, sx, _, params = self._task_model(support_x, None, start, detach=True)
            fast = self._inner_loop(forward, params, sx, support_y, self._test_steps(), create_graph=False,
                                    detach=True)
        return self._predictor(fast)

    def _check_input(self, x: torch.Tensor) -> None:
        if self._guessed_shape is not None and tuple(x.shape[1:]) != self._guessed_shape:
            shape = "x".join(map(str, self._guessed_shape))
            raise ConfigError(f"{self.name} sized its head by a dry run of the backbone on {shape} input, but it is "
                              f"given {'x'.join(map(str, x.shape[1:]))} inputs; pass "
                              f"image_shape={tuple(x.shape[1:])} (or in_features=N) when you build it")

    def _predictor(self, fast: dict) -> Predictor:
        return AdaptedPredictor(self, fast)


class AdaptedPredictor:
    """``query_x -> outputs`` of a model with adapted weights ``weights`` (detached; for
    ANIL the head's only). Runs without gradients."""

    def __init__(self, method: MAML, weights: dict):
        self.method, self.weights = method, weights

    def __call__(self, query_x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            forward, _, qx, params = self.method._task_model(query_x[:0], query_x, self.weights, detach=True)
            return forward(params, qx)


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


__all__ = ["ANIL", "AdaptedPredictor", "FOMAML", "MAML", "MetaSGD"]
