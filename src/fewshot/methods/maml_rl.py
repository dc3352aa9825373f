"""MAML for policies (Finn, Abbeel & Levine, 2017, arXiv:1703.03400, section 3.2 and 5.3): ``maml-rl``.

For a task, the inner loop takes ``inner_steps`` steps of vanilla policy gradient
(REINFORCE with the linear feature baseline, :mod:`fewshot.rl.rollouts`) on ``shot``
rollouts of the current policy, ``θ' = θ - α ∇θ L_τ(θ)``; the outer objective is the
same policy-gradient surrogate on ``query`` fresh rollouts of the adapted policy,
differentiated with respect to θ *through* the inner update (second order), or with
the inner gradients treated as constants (``first_order=True``, first-order MAML).
As in Finn et al., the dependence of the pre-update rollouts' distribution on θ is
not differentiated (ProMP, Rothfuss et al., 2018, arXiv:1810.06784, adds that term).

**Outer optimiser** (``outer``). ``"adam"`` (the default): the one trainer applies its
optimiser (Adam by default, ``--lr``) to the meta-gradient of the mean outer surrogate
over the meta-batch. ``"trpo"``: Finn et al.'s choice, TRPO (Schulman et al., 2015,
arXiv:1502.05477; :mod:`fewshot.rl.trpo`) on the meta-objective: the importance-weighted
outer surrogate ``-mean π_θ'(a|s)/π_θ'old(a|s) A`` of the adapted policies, under the
constraint that the mean KL between the adapted policies before and after the update,
on the outer rollouts' states, is at most ``max_kl`` (0.01); both are functions of θ
through the inner step on the fixed inner rollouts (second order unless
``first_order``), so the Fisher-vector products differentiate through it, as the
ProMP reference code does. The method computes the step itself and declares
``own_step``: the trainer then applies the returned gradient (the negated step) with
plain SGD at rate 1, so its ``--lr`` and optimiser do not act. Split over processes
(``--nproc``), each process takes the TRPO step of its share and the steps are averaged.

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

from .. import budget
from ..errors import ConfigError
from ..params import Boolean, Integer, OneOf, Optional, Real
from ..models.functional import FunctionalModule
from ..models.inner_loop import sgd_step, surrogate_loss
from ..rl.policies import POLICIES, check_policy_method, kl_divergence, log_prob, sample
from ..rl.rng import Generators
from ..rl.rollouts import Rollouts, advantages, policy_gradient_loss, rollout
from ..rl.tasks import RLTask
from ..rl.trpo import trpo_step
from .base import Method, register

OUTER = ("adam", "trpo")


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
    (1.0), ``outer`` (``adam`` / ``trpo``, see the module docstring) and ``max_kl``
    (TRPO's trust region, 0.01 as Finn et al.).
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
        "task": OneOf("reinforcement"), "outer": OneOf(*OUTER), "max_kl": Real(low=0, open_low=True)}

    def __init__(self, backbone: nn.Module, policy: str | None = None, inner_steps: int = 1, inner_lr: float = 0.1,
                 first_order: bool = False, test_inner_steps: int | None = None, discount: float = 0.99,
                 baseline: bool = True, normalize_advantages: bool = True, init_std: float = 1.0,
                 task: str = "reinforcement", image_shape: Sequence[int] | None = None, outer: str = "adam",
                 max_kl: float = 0.01):
        super().__init__(backbone)
        check_policy_method("maml-rl", task, self.tasks, policy, "navigation-2d")
        if backbone is None:
            raise ConfigError("maml-rl needs a policy network module (e.g. fewshot.models.MLP)")
        self.policy, self.inner_steps, self.inner_lr = policy, int(inner_steps), float(inner_lr)
        self.test_inner_steps = None if test_inner_steps is None else int(test_inner_steps)
        self.discount, self.init_std = float(discount), float(init_std)
        self.first_order, self.baseline, self.normalize_advantages = first_order, baseline, normalize_advantages
        self.outer, self.max_kl = outer, float(max_kl)
        # TRPO's update is computed here, not by the trainer's optimiser (see fewshot.methods.base).
        self.own_step = outer == "trpo"
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
        if want_grad and self.own_step:
            return self._trpo_loss(episodes, meta)
        total: list[torch.Tensor | None] = [None] * len(meta)
        values, after, before = [], [], []
        scale = 1.0 / len(episodes)
        generators = [task.generator() for task in episodes]
        create_graph = want_grad and not self.first_order
        with torch.enable_grad():
            # All tasks' rollouts step together; each task adapts from the shared weights.
            fast = [self.parameters_dict()] * len(episodes)
            for step in range(self.inner_steps):
                budget.check()  # the trainer's CPU budget, between inner steps (fewshot.budget)
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

    def sample_meta_batch(self, episodes: Sequence[RLTask]) -> tuple[list[list[Rollouts]], list[Rollouts]]:
        """The rollouts of one meta-update: per task, the inner rollouts of each adaptation
        step and the outer rollouts of the adapted policy (no graph kept)."""
        generators = [task.generator() for task in episodes]
        fast = [self.parameters_dict(detach=True)] * len(episodes)
        inner: list[list[Rollouts]] = [[] for _ in episodes]
        for _ in range(self.inner_steps):
            budget.check()
            batches = self.sample_tasks(fast, episodes, episodes[0].shot, generators)
            for kept, batch in zip(inner, batches):
                kept.append(batch)
            fast = [{n: p.detach() for n, p in self.inner_update(
                {n: p.detach().requires_grad_(True) for n, p in f.items()}, b, create_graph=False).items()}
                for f, b in zip(fast, batches)]
        return inner, self.sample_tasks(fast, episodes, episodes[0].query, generators)

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameter dictionary a flat vector (in ``named_parameters`` order) holds, as views."""
        params, start = {}, 0
        for name, p in self.named_parameters():
            params[name] = vector[start:start + p.numel()].view_as(p)
            start += p.numel()
        return params

    def trpo_closures(self, inner: Sequence[Sequence[Rollouts]], outer: Sequence[Rollouts]):
        """``(objective, kl)`` of a flat parameter vector for a TRPO meta-update on fixed
        rollouts (see the module docstring): the mean importance-weighted outer surrogate of
        the adapted policies, and the mean KL from the adapted policies at the current weights."""
        last: list = [None, None]  # the point last adapted from and its adapted weights (objective, then KL)

        def adapted(vector: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            if last[0] is vector and not torch.is_grad_enabled():
                return last[1]
            vector = vector if vector.requires_grad else vector.detach().requires_grad_(True)
            out = []
            with torch.enable_grad():  # the inner step differentiates, whatever the caller's mode
                for batches in inner:
                    fast = self.unflatten(vector)
                    for batch in batches:
                        fast = self.inner_update(fast, batch, create_graph=not self.first_order)
                    out.append(fast)
            last[:] = [vector, out]
            return out

        def flat_obs(batch: Rollouts) -> torch.Tensor:
            return batch.obs.reshape(batch.horizon * batch.size, *batch.obs.shape[2:])

        x0 = torch.cat([p.detach().reshape(-1) for p in self.parameters()])
        advs = [advantages(b, self.discount, self.baseline, self.normalize_advantages) for b in outer]
        with torch.no_grad():
            old = adapted(x0)
            old_logp = [self.log_probs(f, b).detach() for f, b in zip(old, outer)]
            old_out = [(self._policy_output(f, flat_obs(b)).detach(), None if f.get("log_std") is None
                        else f["log_std"].detach()) for f, b in zip(old, outer)]
        del old

        def objective(vector: torch.Tensor) -> torch.Tensor:
            total = 0.0
            for fast, batch, adv, logp in zip(adapted(vector), outer, advs, old_logp):
                ratio = (self.log_probs(fast, batch) - logp).exp()
                total = total + policy_gradient_loss(ratio, adv, batch.mask)
            return total / len(outer)

        def kl(vector: torch.Tensor) -> torch.Tensor:
            total = 0.0
            for fast, batch, (out0, std0) in zip(adapted(vector), outer, old_out):
                out = self._policy_output(fast, flat_obs(batch))
                div = kl_divergence(self.policy, out0, std0, out, fast.get("log_std"))
                mask = batch.mask.reshape(-1)
                total = total + (div * mask).sum() / mask.sum().clamp_min(1)
            return total / len(outer)

        return objective, kl, x0

    def _trpo_loss(self, episodes: Sequence[RLTask], meta: list[torch.Tensor]):
        """TRPO's meta-update, handed to the trainer as the gradient ``-step`` (``own_step``)."""
        inner, outer = self.sample_meta_batch(episodes)
        objective, kl, x0 = self.trpo_closures(inner, outer)
        result = trpo_step(objective, kl, x0, max_kl=self.max_kl)
        value = torch.tensor(result.objective_before, dtype=x0.dtype)
        metrics = {"return": float(np.mean([float(b.returns().mean()) for b in outer])),
                   "return_before": float(np.mean([float(b[0].returns().mean()) for b in inner] if self.inner_steps
                                                  else [float(b.returns().mean()) for b in outer])),
                   "kl": result.kl, "backtracks": float(result.backtracks)}
        step = self.unflatten(result.step)
        return surrogate_loss(value, meta, [-step[n] for n, _ in self.named_parameters()]), metrics

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
