"""MAML++ (issue 16): per-step BatchNorm, learned per-step rates, the multi-step loss,
derivative-order annealing and the trainer's cosine schedule. Float64, tiny models."""

import pytest
import torch
from torch import nn

from fewshot.config import TrainConfig
from fewshot.data import EpisodeSampler, from_arrays
from fewshot.data.episodes import Episode
from fewshot.errors import ConfigError
from fewshot.evaluate import evaluate
from fewshot.methods import MAML, METHODS, build_method
from fewshot.methods.mamlpp import MAMLpp, msl_weights
from fewshot.models import Conv4, ResNet12
from fewshot.runs import load_run
from fewshot.train import Trainer


def tiny_conv():
    return Conv4(1, width=4, depth=2)


def episodes(count=3, way=3, shot=2, query=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = lambda k: torch.arange(way).repeat_interleave(k)  # noqa: E731
    return [Episode(torch.rand(way * shot, 1, size, size, generator=g, dtype=torch.float64), labels(shot),
                    torch.rand(way * query, 1, size, size, generator=g, dtype=torch.float64), labels(query), way, shot)
            for _ in range(count)]


def build(cls=MAMLpp, net=tiny_conv, **options):
    torch.manual_seed(0)
    options.setdefault("image_shape", (1, 8, 8))
    options.setdefault("way", 3)
    return cls(net(), **options).double()


def grads_of(method, eps):
    params = [p for p in method.parameters() if p.requires_grad]
    loss, _ = method.loss(eps)
    return loss.item(), torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("net", [tiny_conv, lambda: ResNet12(1, widths=(3, 4))], ids=["conv4", "resnet"])
@pytest.mark.parametrize("second_order", [True, False])
def test_batched_equals_per_task(net, second_order):
    results, stats = [], []
    for batched in (True, False):
        method = build(net=net, inner_steps=3, first_order_iterations=0 if second_order else 10, task_batching=batched)
        assert method._create_graph() is second_order
        results.append(grads_of(method, episodes()))
        stats.append(method.bn_step_mean_0.clone())
    (la, ga), (lb, gb) = results
    assert la == pytest.approx(lb, rel=1e-11)
    for a, b in zip(ga, gb):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-9, atol=1e-12))
    assert torch.allclose(stats[0], stats[1], rtol=1e-10)  # both paths gather the same per-step statistics


def test_per_step_batch_norm_keeps_separate_statistics_and_weights_per_step():
    method = build(inner_steps=3)
    backbone_state = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    layers = [name for name, _ in method._bn_layers]
    assert len(layers) == 2 and method.bn_step_mean_0.shape == (3, 4)
    assert all(not any(n.startswith(layer) for n in method._adapted) for layer in layers)  # not adapted inside
    assert [p.shape for p in method.bn_step_params] == [(3, 4)] * 4  # weight and bias of 2 layers, per step
    loss, _ = method.loss(episodes())
    loss.backward()
    mean, var = method.bn_step_mean_0, method.bn_step_var_0
    assert not torch.equal(mean[0], mean[1]) and not torch.equal(mean[1], mean[2])
    assert not torch.equal(var[0], var[1]) and (var != 1).all()
    # Every step's BatchNorm weights learn; the backbone's own statistics are untouched.
    assert all(p.grad is not None and (p.grad.abs().sum(1) > 0).all() for p in method.bn_step_params)
    assert all(torch.equal(v, backbone_state[k]) for k, v in method.backbone.state_dict().items())
    # Evaluation gathers nothing; validation (no_grad) neither.
    before = method.bn_step_mean_0.clone()
    ep = episodes(1)[0]
    method.adapt(ep.support_x, ep.support_y, 3)(ep.query_x)
    with torch.no_grad():
        method.loss(episodes())
    assert torch.equal(before, method.bn_step_mean_0) and int(method.iteration) == 1


def test_per_step_running_statistics_can_normalise_evaluation():
    task = build(inner_steps=2)
    running = build(inner_steps=2, test_batch_norm="per_step")
    for method in (task, running):
        method.loss(episodes())[0].backward()
    ep = episodes(1, seed=4)[0]
    a = task.adapt(ep.support_x, ep.support_y, 3)(ep.query_x)
    b = running.adapt(ep.support_x, ep.support_y, 3)(ep.query_x)
    assert a.shape == b.shape == (6, 3) and not torch.allclose(a, b)
    with pytest.raises(ConfigError, match="per_step_bn"):
        build(per_step_bn=False, test_batch_norm="per_step")


def test_learned_per_step_rates_receive_gradients():
    method = build(inner_steps=3, first_order_iterations=0)
    assert method.step_lrs.shape == (3, len(method._adapted))
    method.loss(episodes())[0].backward()
    assert (method.step_lrs.grad != 0).all()


def test_derivative_order_annealing_switches_at_the_configured_iteration():
    method = build(inner_steps=2, first_order_iterations=2, multi_step_loss=False)
    first = build(inner_steps=2, first_order=True, multi_step_loss=False)
    second = build(inner_steps=2, first_order_iterations=0, multi_step_loss=False)
    eps = episodes()
    seen = []
    for _ in range(3):
        seen.append(method._create_graph())
        mine = grads_of(method, eps)[1]
        reference = grads_of(second if seen[-1] else first, eps)[1]
        for a, b in zip(mine, reference):
            assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-10, atol=1e-13))
    assert seen == [False, False, True] and int(method.iteration) == 3
    assert not all(torch.allclose(a, b) for a, b in zip(grads_of(first, eps)[1], grads_of(second, eps)[1])
                   if a is not None)


def test_multi_step_loss_weights_and_objective():
    assert msl_weights(5, 0.0) == pytest.approx([0.2] * 5)
    assert msl_weights(5, 1.0) == pytest.approx([0.006] * 4 + [0.976])
    for progress in (0.0, 0.3, 0.7, 1.0):
        assert sum(msl_weights(4, progress)) == pytest.approx(1.0)
    # At iteration 0 the objective is the mean of the query losses after 1..N steps, and
    # without MSL and per-step BN, MAML++ is MAML with learned per-step rates.
    eps = episodes()
    method = build(inner_steps=3, per_step_bn=False, msl_iterations=100)
    per_steps = [build(MAML, inner_steps=s, inner_lr=0.1).loss(eps)[0].item() for s in (1, 2, 3)]
    # (rel 1e-8: the learned rates start at float32 0.1, the fixed rate is exactly 0.1)
    assert method.loss(eps)[0].item() == pytest.approx(sum(per_steps) / 3, rel=1e-8)
    assert method.step_weights() == pytest.approx(msl_weights(3, 0.01))
    plain = build(inner_steps=3, per_step_bn=False, multi_step_loss=False, first_order_iterations=0)
    maml = build(MAML, inner_steps=3, inner_lr=0.1, learn_inner_lr=True)
    a, b = grads_of(plain, eps), grads_of(maml, eps)
    assert a[0] == pytest.approx(b[0], rel=1e-12)
    for x, y in zip(a[1], b[1]):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-13)


def test_boil_adapts_the_body_only():
    method = build(MAML, inner_steps=2, boil=True)
    assert method._adapted and not any(n.startswith("head.") for n in method._adapted)
    pp = build(inner_steps=2, boil=True)  # MAML++ with BOIL: the convolutions only (BatchNorm is per step)
    assert pp._adapted == [n for n in method._adapted if not n.split(".")[2] == "1"]
    ep = episodes(1)[0]
    head = method.head.weight.detach().clone()
    predict = method.adapt(ep.support_x, ep.support_y, 3)
    assert torch.equal(predict.weights["head.weight"], head)
    assert not torch.equal(predict.weights["backbone.0.0.weight"], method.backbone[0][0].weight)
    with pytest.raises(ConfigError, match="boil"):
        build(METHODS["anil"], boil=True)


def test_trainer_runs_mamlpp_with_a_cosine_schedule_and_reloads(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12 * 6, 1, 8, 8, generator=g)
    y = torch.arange(12).repeat_interleave(6)
    data = from_arrays(x, y, splits={"train": list(range(8)), "val": [8, 9, 10, 11]})
    config = TrainConfig(method="mamlpp", dataset="arrays", backbone="conv4", backbone_options={"width": 4, "depth": 2},
                         way=3, shot=1, query=2, episodes=4, meta_batch=2, val_every=2, val_episodes=5, lr=1e-2,
                         lr_schedule="cosine", lr_min=1e-4,
                         method_options={"inner_steps": 2, "msl_iterations": 2, "first_order_iterations": 2})
    trainer = Trainer(config, tmp_path / "run", dataset=data, runs=tmp_path)
    trainer.run(progress=False)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    _, method, _ = load_run(tmp_path / "run", "last")
    assert isinstance(method, MAMLpp) and int(method.iteration) == 4 and METHODS["mamlpp"] is MAMLpp
    report = evaluate(method, EpisodeSampler(data, "val", 3, 1, 2), 5, progress=False)
    assert report.episodes == 5
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ConfigError, match="msl_iterations"):
        build_method("mamlpp", tiny_conv(), image_shape=(1, 8, 8), msl_iterations=-1)
    assert nn  # the module under test builds on unmodified nn.Modules
