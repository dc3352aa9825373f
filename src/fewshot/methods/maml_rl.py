"""MAML for policies (Finn, Abbeel & Levine, 2017, arXiv:1703.03400, section 3.2 and 5.3): ``maml-rl``.

For a task, the inner loop takes ``inner_steps`` steps of vanilla policy gradient
(REINFORCE with the linear feature baseline, :mod:`fewshot.rl.rollouts`) on ``shot``
rollouts of the current policy, ``θ' = θ - α ∇θ L_τ(θ)``; the outer objective is the
same policy-gradient surrogate on ``query`` fresh rollouts of the adapted policy,
differentiated with respect to θ *through* the inner update (second order), or with
the inner gradients treated as constants (``first_order=True``, first-order MAML).
As in Finn et al., the dependence of the pre-update rollouts' distribution on θ is
not differentiated (ProMP, Rothfuss et al., 2018, arXiv:1810.06784, adds that term).

**Outer optimiser.** Finn et al. use TRPO; fewshot's one trainer applies its optimiser
(Adam by default, ``--lr``) to the meta-gradient of the mean outer surrogate over the
meta-batch: Adam on the policy-gradient objective, the documented simpler choice.

**Baselines on identical tasks.** ``inner_steps=0`` trains one policy jointly on all
tasks (Finn et al.'s "pretrained" baseline); a policy that is not trained at all is the
"random" baseline. Both are then fine-tuned at test time exactly as MAML's policy is,
with ``test_inner_steps`` steps (``fewshot evaluate --adapt-steps K``).

**Evaluation** (:meth:`MAMLRL.adapt_returns`): from the learned policy, roll out
``shot`` episodes, record their mean (undiscounted) return, take a policy-gradient step
on them, and repeat: the returns after 0, 1, ..., K steps.

The policy is any module mapping observations to a vector (fewshot's ``MLP``): a
Gaussian mean with a learned, state-independent log standard deviation per action
dimension (``policy="gaussian"``, initial standard deviation ``init_std``, adapted in
the inner loop like every parameter) or categorical logits (``policy="categorical"``).
The inner loop runs the module functionally (:mod:`fewshot.models.functional`, as the
supervised MAML does) and the meta-gradient is handed to the trainer task by task
(:func:`~fewshot.models.inner_loop.surrogate_loss`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..params import Boolean, Integer, OneOf, Optional, Real
from ..models.functional import FunctionalModule
from ..models.inner_loop import sgd_step, surrogate_loss
from ..rl.policies import log_prob, sample
from ..rl.rng import Generators
from ..rl.rollouts import Rollouts, advantages, policy_gradient_loss, rollout
from ..rl.tasks import RLTask
from .base import Method, register

POLICIES = ("gaussian", "categorical")


def _check(name: str, value, integer: bool, strict: bool = False):
    """``value`` as an int (``integer``) or float, non-negative (``strict``: positive), else a ConfigError."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value) and (
        value > 0 if strict else value >= 0)
    if not ok:
        raise ConfigError(f"maml-rl {name} must be a {'positive' if strict else 'non-negative'} "
                          f"{'integer' if integer else 'number'}, got {value!r}")
    return int(value) if integer else float(value)


@register
class MAMLRL(Method):
    """MAML with policy-gradient inner and outer loops (see the module docstring).

    Options: ``policy`` (``gaussian`` / ``categorical``; the environment family sets
    it), ``inner_steps`` (1; 0 trains the joint "pretrained" policy), ``inner_lr``
    (0.1, Finn et al.'s for 2D navigation), ``first_order``, ``test_inner_steps``
    (default: ``inner_steps``, at least 1), ``discount`` (0.99), ``baseline`` (the
    linear feature baseline, on), ``normalize_advantages`` (on, as rllab), ``init_std``
    (1.0).
    """

    name = "maml-rl"
    tasks = ("reinforcement",)
    task = "reinforcement"
    test_mode = "train"
    # policy: None only until the environment family sets it (an option the data decides).
    _parameter_constraints = {
        "policy": Optional(OneOf(*POLICIES)), "inner_steps": Integer(low=0), "inner_lr": Real(low=0, open_low=True),
        "first_order": Boolean(), "test_inner_steps": Optional(Integer(low=0)), "discount": Real(low=0, high=1),
        "baseline": Boolean(), "normalize_advantages": Boolean(), "init_std": Real(low=0, open_low=True),
        "task": OneOf("reinforcement")}

    def __init__(self, backbone: nn.Module, policy: str | None = None, inner_steps: int = 1, inner_lr: float = 0.1,
                 first_order: bool = False, test_inner_steps: int | None = None, discount: float = 0.99,
                 baseline: bool = True, normalize_advantages: bool = True, init_std: float = 1.0,
                 task: str = "reinforcement", image_shape: Sequence[int] | None = None):
        super().__init__(backbone)
        if task not in self.tasks:
            raise ConfigError(f"maml-rl learns policies on environment families, not {task} data; "
                              "train it with --env (see `fewshot data list`), e.g. --env navigation-2d")
        if policy is None:
            raise ConfigError(f"maml-rl needs a policy, one of {', '.join(POLICIES)} (training on an environment "
                              "family sets it)")
        if backbone is None:
            raise ConfigError("maml-rl needs a policy network module (e.g. fewshot.models.MLP)")
        self.policy, self.inner_steps, self.inner_lr = policy, int(inner_steps), float(inner_lr)
        self.test_inner_steps = None if test_inner_steps is None else int(test_inner_steps)
        self.discount, self.init_std = float(discount), float(init_std)
        self.first_order, self.baseline, self.normalize_advantages = first_order, baseline, normalize_advantages
        self.log_std = None
        if policy == "gaussian":
            shape = tuple(image_shape) if image_shape is not None else None
            if shape is None:
                raise ConfigError("maml-rl with a gaussian policy needs image_shape (the observation shape) to size "
                                  "its log standard deviation")
            with torch.no_grad():
                out = backbone(torch.zeros(2, *shape, dtype=next(backbone.parameters()).dtype))
            self.log_std = nn.Parameter(torch.full((out.shape[-1],), math.log(self.init_std), dtype=out.dtype))
        self._fmodel = FunctionalModule(self)
        self._names = [n for n, p in self.named_parameters() if p.requires_grad]
        self._layers = self._plain_layers()

    def _plain_layers(self) -> list[tuple[str, nn.Module]] | None:
        """``(parameter prefix, layer)`` of a backbone made only of Flatten, Linear and
        element-wise activations (fewshot's ``MLP``), else ``None``.

        Rollouts call the policy once per environment step on a small batch, where
        ``torch.func.functional_call``'s re-parametrisation (about 0.6 ms) costs more
        than the network; such a backbone is run layer by layer with ``F.linear``
        instead (the same arithmetic). Any other module goes through
        :class:`~fewshot.models.functional.FunctionalModule`.
        """
        plain = (nn.Flatten, nn.Linear, nn.ReLU, nn.Tanh, nn.Identity)
        if not isinstance(self.backbone, nn.Sequential) or not all(isinstance(m, plain) for m in self.backbone):
            return None
        return [(f"backbone.{i}.", m) for i, m in enumerate(self.backbone)]

    def _policy_output(self, params: dict[str, torch.Tensor], obs: torch.Tensor) -> torch.Tensor:
        if self._layers is None:
            return self._fmodel(params, obs)
        x = obs
        for prefix, layer in self._layers:
            if isinstance(layer, nn.Linear):
                x = F.linear(x, params[prefix + "weight"], params.get(prefix + "bias"))
            elif isinstance(layer, nn.ReLU):
                x = torch.relu(x)
            elif isinstance(layer, nn.Tanh):
                x = torch.tanh(x)
            elif isinstance(layer, nn.Flatten):
                x = layer(x)
        return x

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The policy network's output: the Gaussian mean, or the categorical logits."""
        return self.backbone(obs)

    def set_test_options(self, inner_steps: int | None = None, **options) -> None:
        """Test-time adaptation steps (``fewshot evaluate --adapt-steps K``)."""
        if options:
            raise ConfigError(f"maml-rl takes no test-time option {', '.join(sorted(options))}; it takes inner_steps")
        if inner_steps is not None:
            self.test_inner_steps = _check("inner_steps", inner_steps, True)

    def test_steps(self) -> int:
        """Adaptation steps at test time: ``test_inner_steps``, else the training steps (at least 1)."""
        return self.test_inner_steps if self.test_inner_steps is not None else max(self.inner_steps, 1)

    # -- pieces ------------------------------------------------------------------------

    def parameters_dict(self, detach: bool = False) -> dict[str, torch.Tensor]:
        params = dict(self.named_parameters())
        return {n: (p.detach() if detach else p) for n, p in params.items()}

    def log_probs(self, params: dict[str, torch.Tensor], batch: Rollouts) -> torch.Tensor:
        """``log π_params(a_t | s_t)``, ``(T, B)``, in one forward pass over all steps."""
        steps, size = batch.obs.shape[:2]
        out = self._policy_output(params, batch.obs.reshape(steps * size, *batch.obs.shape[2:]))
        actions = batch.actions.reshape(steps * size, *batch.actions.shape[2:])
        return log_prob(self.policy, out, params.get("log_std"), actions).view(steps, size)

    def _stacked_output(self, stacked: dict[str, torch.Tensor], obs: torch.Tensor) -> torch.Tensor:
        """Outputs of M policies at once: ``stacked[name]`` is ``(M, *shape)``, ``obs`` is ``(M, K, d)``."""
        x = obs
        for prefix, layer in self._layers:
            if isinstance(layer, nn.Linear):
                weight, bias = stacked[prefix + "weight"].transpose(1, 2), stacked.get(prefix + "bias")
                x = torch.bmm(x, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, weight)
            elif isinstance(layer, nn.ReLU):
                x = torch.relu(x)
            elif isinstance(layer, nn.Tanh):
                x = torch.tanh(x)
            # Flatten: a row is already a vector here.
        return x

    def sample_rollouts(self, params: dict[str, torch.Tensor], task: RLTask, count: int,
                        generator: torch.Generator) -> Rollouts:
        """``count`` rollouts of ``task`` under the policy with weights ``params`` (no gradient)."""
        return self.sample_tasks([params], [task], count, [generator])[0]

    def sample_tasks(self, params: Sequence[dict[str, torch.Tensor]], tasks: Sequence[RLTask], count: int,
                     generators: Sequence[torch.Generator]) -> list[Rollouts]:
        """``count`` rollouts of each task, task ``m`` under ``params[m]`` drawing its noise
        from ``generators[m]``, run as one batch of environments (see
        :mod:`fewshot.rl.rng`: each task's rollouts are those it would get alone, up to
        floating-point rounding of the batched policy)."""
        family, m = tasks[0].family, len(tasks)
        if any(t.family is not family for t in tasks):
            raise ConfigError("a meta-batch of maml-rl must hold tasks of one environment family")
        rows = torch.cat([t.params.unsqueeze(0).expand(count, -1) for t in tasks])
        source = generators[0] if m == 1 else Generators(generators, [count] * m)
        env = family.make(rows, source)
        detached = [{n: p.detach() for n, p in ps.items()} for ps in params]
        if all(ps is params[0] for ps in params):  # one policy for all (before adaptation)
            forward = lambda obs: self._policy_output(detached[0], obs)  # noqa: E731
            log_std = detached[0].get("log_std")
        elif self._layers is not None:
            stacked = {n: torch.stack([ps[n] for ps in detached]) for n in detached[0]}
            forward = lambda obs: self._stacked_output(stacked, obs.view(m, count, -1)).reshape(m * count, -1)  # noqa: E731
            log_std = stacked["log_std"].repeat_interleave(count, 0) if "log_std" in stacked else None
        else:
            forward = lambda obs: torch.cat([self._policy_output(ps, chunk)  # noqa: E731
                                             for ps, chunk in zip(detached, obs.split(count))])
            log_std = (torch.stack([ps["log_std"] for ps in detached]).repeat_interleave(count, 0)
                       if "log_std" in detached[0] else None)

        def act(obs: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return sample(self.policy, forward(obs), log_std, source)

        batch = rollout(env, act, family.horizon)
        return [batch.columns(i * count, (i + 1) * count) for i in range(m)]

    def surrogate(self, params: dict[str, torch.Tensor], batch: Rollouts) -> torch.Tensor:
        """The REINFORCE surrogate of ``batch`` under ``params`` (advantages are constants)."""
        adv = advantages(batch, self.discount, self.baseline, self.normalize_advantages)
        return policy_gradient_loss(self.log_probs(params, batch), adv, batch.mask)

    def inner_update(self, params: dict[str, torch.Tensor], batch: Rollouts, create_graph: bool) -> dict:
        """One policy-gradient step ``θ - α ∇θ L(θ; batch)`` (differentiable with ``create_graph``)."""
        with torch.enable_grad():
            grads = torch.autograd.grad(self.surrogate(params, batch), [params[n] for n in self._names],
                                        create_graph=create_graph)
        if not create_graph:
            grads = [g.detach() for g in grads]
        return sgd_step(params, self._names, grads, [self.inner_lr] * len(self._names))

    def meta_objective(self, params: dict[str, torch.Tensor], inner: Sequence[Rollouts], outer: Rollouts,
                       first_order: bool | None = None) -> torch.Tensor:
        """The outer surrogate on ``outer`` after inner steps on the fixed rollouts ``inner``:
        a deterministic function of ``params``, the quantity whose gradient MAML follows."""
        first_order = self.first_order if first_order is None else first_order
        fast = params
        for batch in inner:
            fast = self.inner_update(fast, batch, create_graph=not first_order)
        return self.surrogate(fast, outer)

    # -- the interface -------------------------------------------------------------------

    def loss(self, episodes: Sequence[RLTask]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean outer surrogate over the tasks; its gradient is the mean meta-gradient.

        Metrics: ``return`` (mean return of the adapted policy's outer rollouts) and
        ``return_before`` (of the first inner rollouts; with ``inner_steps=0`` both are
        the joint policy's).
        """
        if not episodes:
            raise ConfigError("maml-rl.loss needs at least one task")
        meta = [p for _, p in self.named_parameters()]
        want_grad = torch.is_grad_enabled()
        total: list[torch.Tensor | None] = [None] * len(meta)
        values, after, before = [], [], []
        scale = 1.0 / len(episodes)
        generators = [task.generator() for task in episodes]
        create_graph = want_grad and not self.first_order
        with torch.enable_grad():
            # All tasks' rollouts step together; each task adapts from the shared weights.
            fast = [self.parameters_dict()] * len(episodes)
            for step in range(self.inner_steps):
                batches = self.sample_tasks(fast, episodes, episodes[0].shot, generators)
                if step == 0:
                    before = [float(b.returns().mean()) for b in batches]
                fast = [self.inner_update(f, b, create_graph=create_graph) for f, b in zip(fast, batches)]
            outer = self.sample_tasks(fast, episodes, episodes[0].query, generators)
            for f, batch in zip(fast, outer):
                loss = self.surrogate(f, batch)
                if want_grad:
                    grads = torch.autograd.grad(loss * scale, meta, allow_unused=True)
                    for i, g in enumerate(grads):
                        if g is not None:
                            total[i] = g.clone() if total[i] is None else total[i].add_(g)
                values.append(loss.detach())
                after.append(float(batch.returns().mean()))
            del fast
        value = torch.stack(values).mean()
        metrics = {"return": float(np.mean(after)), "return_before": float(np.mean(before or after))}
        if not want_grad:
            return value, metrics
        return surrogate_loss(value, meta, total), metrics

    def adapt_returns(self, task: RLTask, steps: int | None = None, keep: bool = False):
        """Mean return of ``task.shot`` rollouts after 0, 1, ..., ``steps`` policy-gradient
        steps (``(steps+1,)`` array; default ``test_steps()``); each step's rollouts are
        the data of the next step. With ``keep``, also the rollouts of every step."""
        steps = self.test_steps() if steps is None else _check("steps", steps, True)
        generator = task.generator()
        fast = self.parameters_dict(detach=True)
        returns, kept = np.empty(steps + 1), []
        for k in range(steps + 1):
            batch = self.sample_rollouts(fast, task, task.shot, generator)
            returns[k] = float(batch.returns().mean())
            if keep:
                kept.append(batch)
            if k < steps:
                start = {n: p.detach().requires_grad_(True) for n, p in fast.items()}
                fast = {n: p.detach() for n, p in self.inner_update(start, batch, create_graph=False).items()}
        return (returns, kept) if keep else returns

    def adapt(self, support_x, support_y, way):
        raise ConfigError("maml-rl adapts to environments, not to labelled support sets; evaluate it on an "
                          "environment family (fewshot evaluate RUN --adapt-steps K)")


__all__ = ["MAMLRL"]
