"""MAML, FOMAML, Meta-SGD, ANIL and Reptile: the acceptance tests of issue 3.

Exactness tests run in float64 on tiny models (a 2-block Conv-4 with BatchNorm on 8x8
images, or an MLP), so every check is a tight tolerance, not a smoke test.
"""

import copy
import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewshot.config import TrainConfig
from fewshot.data import EpisodeSampler, SinusoidSampler, from_arrays
from fewshot.data.episodes import Episode
from fewshot.errors import ConfigError
from fewshot.evaluate import evaluate
from fewshot.methods import ANIL, FOMAML, MAML, METHODS, MetaSGD, Reptile, build_method
from fewshot.models import MLP, Conv4
from fewshot.models.functional import FunctionalModule
from fewshot.models.inner_loop import surrogate_loss
from fewshot.models.second_order import batch_norm_train
from fewshot.runtime import keep_freed_memory
from fewshot.runs import load_run
from fewshot.train import Trainer


def tiny_conv(dtype=torch.float64) -> nn.Module:
    return Conv4(1, width=4, depth=2).to(dtype)


def smooth_net(dtype=torch.float64) -> nn.Module:
    """Conv + BatchNorm with smooth activations: finite differences see no kinks."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.Conv2d(4, 4, 3, stride=2),
                         nn.BatchNorm2d(4), nn.Softplus(), nn.Flatten()).to(dtype)


def episodes(count=3, way=3, shot=2, query=2, size=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        sx = torch.rand(way * shot, 1, size, size, generator=g, dtype=dtype)
        qx = torch.rand(way * query, 1, size, size, generator=g, dtype=dtype)
        out.append(Episode(sx, torch.arange(way).repeat_interleave(shot), qx, torch.arange(way).repeat_interleave(query),
                           way, shot))
    return out


def build(cls, seed=0, net=tiny_conv, **options):
    torch.manual_seed(seed)
    options.setdefault("image_shape", (1, 8, 8))
    options.setdefault("way", 3)
    return cls(net(), **options).double()


def meta_params(method):
    return [p for p in method.parameters() if p.requires_grad]


def directional_fd(method, eps, direction, h=1e-5):
    """Central finite difference of the meta-loss along ``direction``."""
    params = meta_params(method)
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(d, alpha=h)
        plus = method.loss(eps)[0].item()
        for p, d in zip(params, direction):
            p.add_(d, alpha=-2 * h)
        minus = method.loss(eps)[0].item()
        for p, d in zip(params, direction):
            p.add_(d, alpha=h)
    return (plus - minus) / (2 * h)


# -- exactness ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls,options", [(MAML, {"inner_steps": 2}), (MetaSGD, {}), (ANIL, {"inner_steps": 2}),
                                         (MAML, {"inner_steps": 2, "learn_inner_lr": True})])
def test_second_order_meta_gradient_matches_finite_differences(cls, options):
    method = build(cls, net=smooth_net, inner_lr=0.3, **options)
    eps = episodes()
    loss, _ = method.loss(eps)
    grads = torch.autograd.grad(loss, meta_params(method))
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in meta_params(method)]
        analytic = sum(float((gr * d).sum()) for gr, d in zip(grads, direction))
        numeric = directional_fd(method, eps, direction)
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_meta_gradient_equals_a_plain_per_task_loop():
    method = build(MAML, inner_steps=2, inner_lr=0.2)
    eps = episodes()
    params = dict(method.named_parameters())
    none = {n: None for n, _ in method.named_buffers()}
    total = 0
    for ep in eps:
        fast = params
        for _ in range(2):
            loss = F.cross_entropy(functional_call(method, (fast, none), (ep.support_x,)), ep.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {n: p - 0.2 * gr for (n, p), gr in zip(fast.items(), grads)}
        total = total + F.cross_entropy(functional_call(method, (fast, none), (ep.query_x,)), ep.query_y)
    reference = torch.autograd.grad(total / len(eps), list(params.values()))
    loss, _ = method.loss(eps)
    assert loss.item() == pytest.approx((total / len(eps)).item(), rel=1e-12)
    ours = torch.autograd.grad(loss, list(params.values()))
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_first_order_equals_the_stop_gradient_version():
    eps = episodes()
    fo = build(FOMAML, inner_steps=2, inner_lr=0.3)
    so = build(MAML, inner_steps=2, inner_lr=0.3)
    params = dict(fo.named_parameters())
    none = {n: None for n, _ in fo.named_buffers()}
    total = 0
    for ep in eps:
        fast = params
        for _ in range(2):
            loss = F.cross_entropy(functional_call(fo, (fast, none), (ep.support_x,)), ep.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {n: p - 0.3 * gr.detach() for (n, p), gr in zip(fast.items(), grads)}
        total = total + F.cross_entropy(functional_call(fo, (fast, none), (ep.query_x,)), ep.query_y)
    reference = torch.autograd.grad(total / len(eps), list(params.values()))
    ours = torch.autograd.grad(fo.loss(eps)[0], list(params.values()))
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    second = torch.autograd.grad(so.loss(eps)[0], meta_params(so))
    assert not all(torch.allclose(a, b) for a, b in zip(ours, second))  # second order is a different gradient
    assert fo.first_order and METHODS["fomaml"] is FOMAML
    with pytest.raises(ConfigError, match="first-order"):
        FOMAML(tiny_conv(), first_order=False, image_shape=(1, 8, 8))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("layout", ["channels_last", "channels_first", "rows"])
@pytest.mark.parametrize("outer", ["all", "dx only", "dw and db only"])
@pytest.mark.parametrize("grad_layout", ["same", "other"])
def test_batch_norm_double_backward_matches_pytorch(affine, layout, outer, grad_layout):
    torch.manual_seed(0)
    shape = (7, 3) if layout == "rows" else (5, 4, 6, 6)
    x = torch.randn(shape, dtype=torch.float64) * 3 + 2  # off-centre, as activations are
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(shape[1], dtype=torch.float64, requires_grad=True) if affine else None
    b = torch.randn(shape[1], dtype=torch.float64, requires_grad=True) if affine else None
    leaves = [x] + ([w, b] if affine else [])
    v = torch.randn_like(x)
    if grad_layout == "other" and layout != "rows":  # a gradient in the other layout (a convolution's can be)
        v = v.contiguous() if layout == "channels_last" else v.contiguous(memory_format=torch.channels_last)

    def second(norm):
        y = norm(x, w, b)
        grads = torch.autograd.grad((y * v).sum() + y.pow(3).mean(), leaves, create_graph=True)
        terms = {"dx": (grads[0] * x.sin()).sum()}
        if affine:
            terms["dw"], terms["db"] = grads[1].pow(2).sum(), (grads[2] * torch.arange(shape[1])).sum()
        wanted = {"all": ("dx", "dw", "db"), "dx only": ("dx",), "dw and db only": ("dw", "db")}[outer]
        total = sum(terms[k] for k in wanted if k in terms)
        if not isinstance(total, torch.Tensor):  # no weights and only their terms asked: nothing to check
            return []
        return torch.autograd.grad(total, leaves, allow_unused=True)

    ours = second(lambda x, w, b: batch_norm_train(x, w, b, 1e-5))
    theirs = second(lambda x, w, b: F.batch_norm(x, None, None, w, b, True, 0.0, 1e-5))
    for a, c in zip(ours, theirs):
        if a is None or c is None:  # no path to this leaf in one of them: it must be zero in the other
            assert (a if a is not None else c if c is not None else torch.zeros(())).abs().max() < 1e-12
        else:
            assert torch.allclose(a, c, rtol=1e-10, atol=1e-12)


# -- the family --------------------------------------------------------------------------

@pytest.mark.parametrize("first_order", [False, True])
def test_meta_sgd_learning_rates_receive_gradients_and_change(first_order):
    method = build(MetaSGD, inner_lr=0.1, first_order=first_order)
    assert len(method.inner_lrs) == len(method._adapted)
    before = [lr.detach().clone() for lr in method.inner_lrs]
    opt = torch.optim.Adam(meta_params(method), lr=1e-2)
    loss, _ = method.loss(episodes())
    opt.zero_grad()
    loss.backward()
    assert all(lr.grad is not None for lr in method.inner_lrs)
    opt.step()
    for name, a, lr in zip(method._adapted, before, method.inner_lrs):
        # A convolution bias before BatchNorm has no effect, hence a zero (1e-32) gradient.
        if not (name.endswith(".0.bias") and name.startswith("backbone.")):
            assert lr.grad.abs().sum() > 1e-6 and not torch.equal(a, lr.detach()), name


def test_learned_per_step_rates_receive_gradients():
    method = build(MAML, inner_steps=2, learn_inner_lr=True)
    assert method.step_lrs.shape == (2, len(method._adapted))
    loss, _ = method.loss(episodes())
    loss.backward()
    assert method.step_lrs.grad is not None and (method.step_lrs.grad != 0).all()


def test_anil_adapts_the_head_only():
    method = build(ANIL, inner_steps=3, inner_lr=0.5)
    assert method._adapted == ["head.weight", "head.bias"]
    ep = episodes(1)[0]
    body = {n: p.detach().clone() for n, p in method.backbone.named_parameters()}
    predict = method.adapt(ep.support_x, ep.support_y, 3)
    with torch.no_grad():
        features = FunctionalModule(method.backbone)({}, ep.query_x)
        out = predict(ep.query_x)
    assert all(torch.equal(p, body[n]) for n, p in method.backbone.named_parameters())
    # The prediction is the shared body's features through an adapted head.
    assert sorted(predict.weights) == ["head.bias", "head.weight"]
    fast_w, fast_b = predict.weights["head.weight"], predict.weights["head.bias"]
    assert not torch.allclose(fast_w, method.head.weight)
    assert torch.allclose(out, F.linear(features, fast_w, fast_b))
    # The body still learns, in the outer loop.
    loss, _ = method.loss(episodes())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in method.backbone.named_parameters()
               if "weight" in n)


def test_reptile_update_follows_its_formula():
    eps = episodes(2)
    method = build(Reptile, inner_steps=3, inner_lr=0.2)
    theta = {n: p.detach().clone() for n, p in method.named_parameters()}
    none = {n: None for n, _ in method.named_buffers()}
    adapted = []
    for ep in eps:
        x, y = torch.cat([ep.support_x, ep.query_x]), torch.cat([ep.support_y, ep.query_y])
        fast = {n: p.clone().requires_grad_() for n, p in theta.items()}
        for _ in range(3):
            loss = F.cross_entropy(functional_call(method, (fast, none), (x,)), y)
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {n: (p - 0.2 * g).detach().requires_grad_() for (n, p), g in zip(fast.items(), grads)}
        adapted.append(fast)
    epsilon = 0.5
    opt = torch.optim.SGD(method.parameters(), lr=epsilon)  # no momentum: exactly Reptile
    loss, metrics = method.loss(eps)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for n, p in method.named_parameters():
        mean = sum(a[n] for a in adapted) / len(adapted)
        assert torch.allclose(p, theta[n] + epsilon * (mean - theta[n]), rtol=1e-9, atol=1e-12), n
    assert 0 <= metrics["accuracy"] <= 100


def test_a_pretrained_sequential_with_batchnorm_works_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 8))
    with torch.no_grad():  # "pre-trained": non-trivial running statistics
        model[1].running_mean.fill_(0.3)
        model[1].running_var.fill_(2.0)
    model = model.double()
    state = copy.deepcopy(model.state_dict())
    for mode in ("task", "running"):
        method = MAML(model, way=3, image_shape=(1, 8, 8), inner_steps=2, batch_norm=mode).double()
        assert method.head.in_features == 8
        loss, _ = method.loss(episodes())
        loss.backward()
        ep = episodes(1)[0]
        predict = method.adapt(ep.support_x, ep.support_y, 3)
        assert predict(ep.query_x).shape == (6, 3)
        for k, v in model.state_dict().items():  # nothing rewritten, no statistic updated
            assert torch.equal(v, state[k]), (mode, k)
        model.zero_grad()
    # "running" normalises with the stored statistics, "task" with the batch's.
    x = episodes(1)[0].query_x
    params = dict(model.named_parameters())
    with torch.no_grad():
        running = FunctionalModule(model, "running")(params, x)
        task = FunctionalModule(model, "task")(params, x)
        assert torch.allclose(running, model.eval()(x))
        assert torch.allclose(task, model.train()(x))
    assert not torch.allclose(running, task)


def test_evaluation_keeps_no_graph_and_memory_stays_flat():
    method = build(MAML, inner_steps=3)
    eps = episodes(40, seed=3)

    def run(batch):
        for ep in batch:
            with torch.no_grad():
                out = method.adapt(ep.support_x, ep.support_y, ep.way)(ep.query_x)
            assert out.grad_fn is None and not out.requires_grad

    def live_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))

    run(eps[:5])
    before = live_tensors()
    run(eps)
    assert live_tensors() == before
    ep = eps[0]
    with torch.no_grad():
        predict = method.adapt(ep.support_x, ep.support_y, ep.way)
    assert len(predict.weights) == len(method._adapted)
    assert all(t.grad_fn is None and not t.requires_grad for t in predict.weights.values())


def test_test_time_inner_steps_differ_from_training():
    method = build(MAML, inner_steps=1)
    calls = []
    original = method._inner_loop

    def counting(forward, params, x, y, steps, *args, **kwargs):
        calls.append(steps)
        return original(forward, params, x, y, steps, *args, **kwargs)

    method._inner_loop = counting
    ep = episodes(1)[0]
    method.loss([ep])
    method.set_test_options(inner_steps=3)
    method.adapt(ep.support_x, ep.support_y, 3)
    assert calls == [1, 3]
    with pytest.raises(ConfigError, match="no test-time option"):
        method.set_test_options(distance="cosine")
    with pytest.raises(ConfigError, match="learned"):
        build(MetaSGD).set_test_options(inner_lr=0.1)


def test_a_head_serves_fewer_ways_and_refuses_more():
    method = build(MAML, way=5)
    ep = episodes(1, way=3)[0]
    assert method.adapt(ep.support_x, ep.support_y, 3)(ep.query_x).shape == (6, 3)
    method.loss([ep])[0].backward()
    assert (method.head.weight.grad[3:] == 0).all() and (method.head.weight.grad[:3] != 0).any()
    with pytest.raises(ConfigError, match="-o way=6"):
        method.loss(episodes(1, way=6))
    metasgd = build(MetaSGD, way=5)
    assert metasgd.adapt(ep.support_x, ep.support_y, 3)(ep.query_x).shape == (6, 3)


def test_a_head_sized_on_a_guessed_shape_refuses_other_inputs_in_one_line():
    # Built without image_shape, MAML sizes its head by a dry run on 1x28x28 input; a
    # Conv-4 on 8x8 images gives other features, which must be a clear error, not a matmul's.
    method = MAML(Conv4(1, width=4, depth=2).double(), way=3)
    ep = episodes(1, way=3)[0]
    for call in (lambda: method.loss([ep]), lambda: method.adapt(ep.support_x, ep.support_y, 3)):
        with pytest.raises(ConfigError, match=r"dry run .* 1x28x28 input.*image_shape=\(1, 8, 8\)"):
            call()
    sized = MAML(Conv4(1, width=4, depth=2), way=3, image_shape=(1, 8, 8)).double()
    assert sized.adapt(ep.support_x, ep.support_y, 3)(ep.query_x).shape == (6, 3)


def test_determinism_for_a_fixed_seed():
    def train():
        method = build(MAML, seed=7, inner_steps=2)
        opt = torch.optim.Adam(method.parameters(), 1e-2)
        for step in range(3):
            loss, _ = method.loss(episodes(2, seed=step))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return method.state_dict()

    a, b = train(), train()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_surrogate_loss_carries_value_and_gradient():
    p = torch.randn(3, requires_grad=True)
    value, grad = torch.tensor(2.5), torch.tensor([1.0, -2.0, 0.5])
    loss = surrogate_loss(value, [p], [grad])
    assert loss.item() == 2.5
    (3 * loss).backward()
    assert torch.equal(p.grad, 3 * grad)
    assert torch.isnan(surrogate_loss(value, [p], [torch.tensor([1.0, float("inf"), 0.0])]))
    assert keep_freed_memory() in (True, False)


# -- regression and the trainer ----------------------------------------------------------

@pytest.mark.parametrize("name", ["maml", "metasgd", "anil", "reptile"])
def test_sinusoid_regression_learns(name):
    torch.manual_seed(0)
    options = {"maml": {"inner_lr": 0.01}, "metasgd": {"inner_lr": 0.01}, "anil": {"inner_lr": 0.1, "inner_steps": 2},
               "reptile": {"inner_lr": 0.01, "inner_steps": 3}}[name]
    method = build_method(name, MLP(1, (40, 40), out_features=1), task="regression", **options)
    assert method.head is None
    sampler = SinusoidSampler(shot=10, query=10, seed=0)
    opt = torch.optim.Adam(method.parameters(), 1e-2)
    test = list(SinusoidSampler(shot=10, query=50, seed=1).suite(20))

    def test_mse():
        errors = []
        for ep in test:
            with torch.no_grad():
                pred = method.adapt(ep.support_x, ep.support_y, 1)(ep.query_x)
            errors.append(F.mse_loss(pred, ep.query_y).item())
        return sum(errors) / len(errors)

    before = test_mse()
    for step in range(150):
        loss, metrics = method.loss(sampler.batch(step, 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert "mse" in metrics and test_mse() < 0.7 * before


def test_trainer_cli_options_and_reload(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12 * 6, 1, 8, 8, generator=g)
    y = torch.arange(12).repeat_interleave(6)
    data = from_arrays(x, y, splits={"train": list(range(8)), "val": [8, 9, 10, 11]})
    config = TrainConfig(method="maml", dataset="arrays", backbone="conv4", backbone_options={"width": 4, "depth": 2},
                         way=3, shot=1, query=2, episodes=4, meta_batch=2, val_every=2, val_episodes=5,
                         method_options={"inner_steps": 1, "inner_lr": 0.4, "first_order": True})
    result = Trainer(config, tmp_path / "run", dataset=data, runs=tmp_path).run(progress=False)
    assert result.steps == 4 and result.best_accuracy is not None
    _, method, _ = load_run(tmp_path / "run")
    assert isinstance(method, MAML) and method.first_order and method.head.out_features == 3
    method.set_test_options(inner_steps=3)
    report = evaluate(method, EpisodeSampler(data, "val", 3, 1, 2), 5, progress=False)
    assert report.episodes == 5 and 0 <= report.accuracy <= 100
    for name in ("maml", "fomaml", "metasgd", "anil", "reptile"):
        assert name in METHODS and METHODS[name].test_mode == "train"
    with pytest.raises(ConfigError, match="inner_steps"):
        build_method("maml", tiny_conv(), image_shape=(1, 8, 8), inner_steps=-1)
    with pytest.raises(ConfigError, match="image_shape"):
        build_method("maml", MLP(64, (8,)))  # a dry run on 1x28x28 cannot size a head for this backbone
