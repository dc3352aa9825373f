"""Feature-wise transformation layers learned by learning-to-learn (LFT; Tseng, Lee, Huang and
Yang, "Cross-Domain Few-Shot Classification via Learned Feature-Wise Transformation", ICLR
2020, arXiv:2001.08735, Algorithm 1).

A metric method (one whose outer loss is the per-episode loop of
:meth:`fewshot.methods.base.Method.loss`: ProtoNet, Matching, Relation Networks ...) on a
backbone whose FT layers are *learned* (``--backbone conv4-ft --backbone-option learned=true``,
:mod:`fewshot.models.feature_transform`) trains by :func:`learning_to_learn_loss` instead of
the plain loop. Each meta-batch, drawn from several source domains
(:class:`~fewshot.data.domains.MultiDomainSampler`, e.g. ``--dataset
omniglot,omniglot:elastic,omniglot:thicken``), is split in two: the episodes of its first
episode's domain are the *pseudo-seen* ones, those of every other domain the *pseudo-unseen*
ones. Then, as in Algorithm 1:

1. the pseudo-seen loss ``L_ps(w, theta)`` of the model with the FT layers on (training mode);
2. one SGD step of the model's weights on it, kept in the graph:
   ``w' = w - lft_lr * dL_ps/dw`` (``lft_lr``: the authors use their model optimiser's
   learning rate, 1e-3);
3. the pseudo-unseen loss ``L_pu(w')`` of the updated model with the FT layers *off*, as the
   method is tested (its ``test_mode``: ProtoNet's BatchNorm on running statistics, as the
   authors' ``model.eval()``);
4. the model's weights get ``dL_ps/dw`` (their update is the plain one on the pseudo-seen
   episodes), and the FT hyper-parameters get ``dL_pu(w'(theta))/dtheta``, and nothing else:
   the FT layers' own gradient on the pseudo-seen loss is not used. BatchNorm's running
   statistics, which the pseudo-seen pass updates in place, are constants of that gradient
   (as in the authors' code, github hytseng0509/CrossDomainFewShot, ``methods/LFTNet.py``).

The trainer applies one optimiser to both (Adam at ``--lr``; the authors have two Adams at
1e-3). To hand the trainer these two gradients as the gradient of one loss, the returned
loss is a surrogate whose value is ``L_ps`` and whose gradient is exactly the pair above
(``sum(p * g)`` with the ``g`` computed here, minus its own value). A meta-batch whose
episodes all come from one domain has no pseudo-unseen episode: the model steps on it as ever
and the thetas get no gradient (``metrics["lft_steps"]`` is 0 for it).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..errors import ConfigError
from ..metrics import accuracy
from ..models.feature_transform import learned_transforms, transforms_off


class _Episodes(nn.Module):
    """A method's mean episode loss as a module's forward, for :func:`torch.func.functional_call`
    (which runs it with the fast weights in place of the method's own)."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, episodes: Sequence) -> tuple[torch.Tensor, float]:
        return episode_loss(self.method, episodes)


def episode_loss(method, episodes: Sequence) -> tuple[torch.Tensor, float]:
    """Mean loss over ``episodes`` and their mean accuracy (%): the per-episode loop of
    :meth:`fewshot.methods.base.Method.loss`."""
    losses, accs = [], []
    for ep in episodes:
        logits = method.episode_logits(ep)
        losses.append(method.episode_loss(logits, ep.query_y))
        accs.append(accuracy(logits, ep.query_y))
    return torch.stack(losses).mean(), sum(accs) / len(accs)


def split_domains(episodes: Sequence) -> tuple[list, list]:
    """The pseudo-seen episodes (those of the first episode's domain) and the pseudo-unseen
    ones (every other domain's); refuses episodes that name no domain."""
    if len(episodes) < 2 or not all(ep.domain for ep in episodes):
        raise ConfigError("learned FT layers learn across source domains: train on several "
                          "(--dataset A,B, e.g. omniglot,omniglot:elastic,omniglot:thicken) with --meta-batch 2 or "
                          "more, or use fixed FT layers (backbone option learned=false)")
    seen = episodes[0].domain
    return [ep for ep in episodes if ep.domain == seen], [ep for ep in episodes if ep.domain != seen]


def learning_to_learn_loss(method: nn.Module, episodes: Sequence) -> tuple[torch.Tensor, dict[str, float]]:
    """The surrogate loss of one LFT step over a meta-batch (see the module docstring) and its
    metrics: the pseudo-seen ``accuracy``, the pseudo-unseen loss after the update
    (``unseen_loss``, NaN when there is none) and ``lft_steps`` (1, or 0 without pseudo-unseen
    episodes)."""
    thetas = learned_transforms(method.backbone)
    if not thetas:
        raise ConfigError(f"{method.name}'s backbone has no learned FT layers (backbone option learned=true)")
    seen, unseen = split_domains(episodes)
    own = {id(t) for t in thetas}
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad and id(p) not in own]
    seen_loss, seen_acc = episode_loss(method, seen)  # FT layers on: the method is in training mode
    grads = torch.autograd.grad(seen_loss, [p for _, p in named], create_graph=bool(unseen), allow_unused=True)
    terms = [(p * g.detach()).sum() for (_, p), g in zip(named, grads) if g is not None]
    metrics = {"accuracy": seen_acc, "unseen_loss": float("nan"), "lft_steps": 0.0}
    if unseen:
        lr = float(method.backbone.lft_lr)
        fast = {f"method.{n}": p - lr * g for (n, p), g in zip(named, grads) if g is not None}
        was_training = method.training
        method.train(method.test_mode == "train")  # the updated model as it is tested
        try:
            with transforms_off(method):
                unseen_loss, _ = functional_call(_Episodes(method), fast, (unseen,), strict=False)
        finally:
            method.train(was_training)
        theta_grads = torch.autograd.grad(unseen_loss, thetas, allow_unused=True)
        terms += [(t * g).sum() for t, g in zip(thetas, theta_grads) if g is not None]
        metrics.update(unseen_loss=float(unseen_loss.detach()), lft_steps=1.0)
    surrogate = torch.stack(terms).sum() if terms else seen_loss.new_zeros(())
    # Value: the pseudo-seen loss; gradient: exactly the terms' g (each sum(p * g) - its own value).
    return seen_loss.detach() + surrogate - surrogate.detach(), metrics


__all__ = ["episode_loss", "learning_to_learn_loss", "split_domains"]
