"""FT layers learned by learning-to-learn (fewshot.methods.lft; Tseng et al., arXiv:2001.08735,
Algorithm 1): what gets which gradient, checked against finite differences on a tiny model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from fewshot.config import TrainConfig
from fewshot.data import load_dataset, make_sampler
from fewshot.errors import ConfigError
from fewshot.methods import build_method
from fewshot.methods.lft import episode_loss, split_domains
from fewshot.models import build_backbone
from fewshot.models.feature_transform import FeatureWiseTransform, learned_transforms, transforms_off
from fewshot.train import Trainer


@pytest.fixture(scope="module")
def two_domains():
    return load_dataset("digits,digits:invert", image_size=16)


def _protonet(learned: bool, lft_lr: float = 1e-3, seed: int = 0):
    torch.manual_seed(seed)
    backbone = build_backbone("conv4-ft", (1, 16, 16), width=4, depth=2, learned=learned, lft_lr=lft_lr)
    return build_method("protonet", backbone)


def _batch(dataset, size: int, start: int = 0):
    sampler = make_sampler(dataset.name, dataset, "train", 3, 2, 3, seed=0)
    return [sampler.episode(start + i) for i in range(size)]


def _mixed(dataset, size: int = 4):
    """A meta-batch whose episodes come from both domains, the first from either."""
    for start in range(0, 200, size):
        batch = _batch(dataset, size, start)
        if len({ep.domain for ep in batch}) == 2:
            return batch
    raise AssertionError("no mixed meta-batch among the first episodes")


def test_learned_thetas_are_parameters_under_the_fixed_buffers_names():
    fixed, learned = _protonet(False).backbone, _protonet(True).backbone
    assert learned_transforms(fixed) == [] and len(learned_transforms(learned)) == 4
    assert set(fixed.state_dict()) == set(learned.state_dict())
    extra = sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in fixed.parameters())
    assert extra == 2 * (4 + 4)  # theta_gamma and theta_beta per channel, two layers of 4 channels
    assert "learned" in repr(learned)


def test_the_pseudo_seen_and_unseen_episodes_are_split_by_domain(two_domains):
    batch = _mixed(two_domains)
    seen, unseen = split_domains(batch)
    assert {ep.domain for ep in seen} == {batch[0].domain} and unseen
    assert batch[0].domain not in {ep.domain for ep in unseen} and len(seen) + len(unseen) == len(batch)
    plain = load_dataset("digits", image_size=16)
    with pytest.raises(ConfigError, match="several"):
        split_domains(_batch(plain, 4))


def test_model_update_is_the_plain_pseudo_seen_one_and_thetas_learn_only_through_it(two_domains):
    batch = _mixed(two_domains)
    seen, _ = split_domains(batch)
    learned, fixed = _protonet(True), _protonet(False)
    fixed.load_state_dict(learned.state_dict())
    learned.train(), fixed.train()
    torch.manual_seed(5)
    loss, metrics = learned.loss(batch)
    loss.backward()
    # The fixed twin's plain loss on the pseudo-seen episodes, with the same noise draws.
    torch.manual_seed(5)
    plain, plain_metrics = fixed.loss(seen)
    plain.backward()
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
    assert metrics["accuracy"] == plain_metrics["accuracy"] and metrics["lft_steps"] == 1.0
    thetas = {id(t) for t in learned_transforms(learned.backbone)}
    weights = [(n, p) for n, p in learned.named_parameters() if id(p) not in thetas]
    for (name, p), q in zip(weights, fixed.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in learned_transforms(learned.backbone))
    # One domain only: the model steps as ever, the thetas get no gradient at all.
    one = [ep for ep in _batch(two_domains, 12) if ep.domain == batch[0].domain][:3]
    learned.zero_grad(set_to_none=True)
    loss, metrics = learned.loss(one)
    loss.backward()
    assert metrics["lft_steps"] == 0.0 and all(t.grad is None for t in learned_transforms(learned.backbone))
    assert all(p.grad is not None for _, p in weights if p.requires_grad)


def _unseen_loss_after_update(method, batch, seed: int, statistics=None):
    """L_pu(w - lr dL_ps/dw) with the noise of ``seed``, computed from scratch on a copy, and
    the BatchNorm running statistics it used. The pseudo-seen pass updates them in place, out
    of the graph (as in the authors' code), so a finite difference holds them at
    ``statistics``: those of the unperturbed pass."""
    m = copy.deepcopy(method)
    seen, unseen = split_domains(batch)
    thetas = {id(t) for t in learned_transforms(m.backbone)}
    named = [(n, p) for n, p in m.named_parameters() if id(p) not in thetas]
    torch.manual_seed(seed)
    loss, _ = episode_loss(m, seen)
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    with torch.no_grad():
        for (_, p), g in zip(named, grads):
            if g is not None:
                p -= m.backbone.lft_lr * g
    buffers = {n: b.clone() for n, b in m.named_buffers() if "running" in n}
    if statistics is not None:
        m.load_state_dict(statistics, strict=False)
    m.eval()
    with torch.no_grad(), transforms_off(m):
        return episode_loss(m, unseen)[0], buffers


def test_theta_gradient_matches_finite_differences_and_a_step_down_it_lowers_the_unseen_loss(two_domains):
    batch = [dataclasses.replace(ep, support_x=ep.support_x.double(), query_x=ep.query_x.double())
             for ep in _mixed(two_domains)]
    method = _protonet(True, lft_lr=0.5, seed=1).double()
    method.train()
    start = copy.deepcopy(method)
    torch.manual_seed(7)
    loss, _ = method.loss(batch)
    loss.backward()
    thetas = learned_transforms(method.backbone)
    grads = [t.grad.clone() for t in thetas]
    base, statistics = _unseen_loss_after_update(start, batch, 7)
    # Small: ReLU and max-pooling make the function piecewise smooth, and a wider difference
    # can straddle a kink (at 1e-4 one coordinate is off by 0.2 %).
    eps = 1e-6
    for k in range(len(thetas)):
        for c in (0, 3):
            numeric = []
            for sign in (1, -1):
                m = copy.deepcopy(start)
                with torch.no_grad():
                    learned_transforms(m.backbone)[k].view(-1)[c] += sign * eps
                numeric.append(_unseen_loss_after_update(m, batch, 7, statistics)[0])
            fd = float((numeric[0] - numeric[1]) / (2 * eps))
            assert grads[k].view(-1)[c].item() == pytest.approx(fd, rel=1e-5, abs=1e-8), (k, c)
    # One small step down the learned-FT gradient lowers the pseudo-unseen loss after the update.
    stepped = copy.deepcopy(start)
    norm = torch.sqrt(sum(g.square().sum() for g in grads))
    with torch.no_grad():
        for t, g in zip(learned_transforms(stepped.backbone), grads):
            t -= 1e-2 * g / norm
    assert _unseen_loss_after_update(stepped, batch, 7, statistics)[0] < base


def test_learned_ft_layers_are_off_at_test_time(two_domains):
    method = _protonet(True)
    ep = _batch(two_domains, 1)[0]
    method.eval()
    moved = copy.deepcopy(method)
    with torch.no_grad():
        for t in learned_transforms(moved.backbone):
            t.add_(3.0)
    # Whatever the thetas learned, a tested model is the same: eval mode ...
    assert torch.allclose(method.adapt(ep.support_x, ep.support_y, ep.way)(ep.query_x),
                          moved.adapt(ep.support_x, ep.support_y, ep.way)(ep.query_x))
    # ... and training mode inside an evaluation (transforms_off), as MAML-style BatchNorm keeps it.
    method.train(), moved.train()
    with transforms_off(method), transforms_off(moved):
        assert torch.allclose(method.backbone(ep.query_x), moved.backbone(ep.query_x))
        assert all(not m.active() for m in moved.modules() if isinstance(m, FeatureWiseTransform))


def test_a_run_learns_its_thetas_across_source_domains_and_refusals_are_one_line(tmp_path, two_domains):
    config = TrainConfig(method="protonet", dataset="digits,digits:invert", backbone="conv4-ft",
                         dataset_options={"image_size": 16},
                         backbone_options={"width": 4, "depth": 2, "learned": True}, way=3, shot=1, query=3,
                         episodes=4, meta_batch=4, val_split=None)
    trainer = Trainer(config, tmp_path / "run", runs=tmp_path / "runs")
    before = [t.detach().clone() for t in learned_transforms(trainer.method.backbone)]
    trainer.run(progress=False)
    after = learned_transforms(trainer.method.backbone)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    with pytest.raises(ConfigError, match="several"):
        Trainer(TrainConfig(**{**config.to_dict(), "dataset": "digits"}), tmp_path / "one",
                runs=tmp_path / "runs").run(progress=False)
    backbone = build_backbone("conv4-ft", (1, 16, 16), width=4, depth=2, learned=True)
    with pytest.raises(ConfigError, match="own outer loss"):
        build_method("maml", backbone, way=3)


def test_a_paused_learned_ft_run_resumes_exactly_as_an_uninterrupted_one(tmp_path, two_domains):
    config = TrainConfig(method="protonet", dataset="digits,digits:invert", backbone="conv4-ft",
                         backbone_options={"width": 4, "depth": 2, "learned": True}, way=3, shot=1, query=3,
                         episodes=150, meta_batch=2, val_split=None)
    whole = Trainer(config, tmp_path / "whole", dataset=two_domains, runs=tmp_path / "runs")
    whole.run(progress=False)
    paused = Trainer(config, tmp_path / "paused", dataset=two_domains, runs=tmp_path / "runs").run(
        progress=False, pause_at_cpu_minutes=0.002)
    assert paused.paused and 0 < paused.steps < 150, "the pause must fall mid-run for this test to mean anything"
    resumed = Trainer(config, tmp_path / "paused", dataset=two_domains, runs=tmp_path / "runs")
    resumed.run(resume=True, progress=False)
    want, got = whole.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert any(not torch.equal(t, torch.full_like(t, v)) for t, v in
               zip(learned_transforms(whole.method.backbone), [0.3, 0.5] * 2))
