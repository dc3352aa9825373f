"""Task-batched inner loops (issue 16): the batched path computes what the per-task loop computes.

Every comparison runs in float64 on tiny models, so the tolerances are tight: the two
paths are the same mathematics in a different order of operations.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewshot.data.episodes import Episode
from fewshot.methods import ANIL, FOMAML, MAML, MetaSGD, Reptile
from fewshot.models import Conv4, ResNet12
from fewshot.models.functional import FunctionalModule
from fewshot.models.second_order import channels_last, conv_fixed_input
from fewshot.models.task_batched import TaskBatched, unbatchable_layer


def tiny_conv():
    return Conv4(1, width=4, depth=2)


def tiny_resnet():
    return ResNet12(1, widths=(3, 4))


def episodes(count=3, way=3, shot=2, query=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = lambda k: torch.arange(way).repeat_interleave(k)  # noqa: E731
    return [Episode(torch.rand(way * shot, 1, size, size, generator=g, dtype=torch.float64), labels(shot),
                    torch.rand(way * query, 1, size, size, generator=g, dtype=torch.float64), labels(query), way, shot)
            for _ in range(count)]


def build(cls, net, **options):
    torch.manual_seed(0)
    options.setdefault("image_shape", (1, 8, 8))
    options.setdefault("way", 3)
    return cls(net(), **options).double()


def loss_and_grads(method, eps, batched, chunk=None):
    method.task_batching, method.task_chunk = batched, chunk
    params = [p for p in method.parameters() if p.requires_grad]
    loss, metrics = method.loss(eps)
    return loss.item(), torch.autograd.grad(loss, params, allow_unused=True), metrics


def assert_same(a, b):
    (la, ga, ma), (lb, gb, mb) = a, b
    assert la == pytest.approx(lb, rel=1e-11)
    assert ma == pytest.approx(mb)
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.allclose(x, y, rtol=1e-9, atol=1e-12)


CASES = [(MAML, {"inner_steps": 1}), (MAML, {"inner_steps": 5}), (FOMAML, {"inner_steps": 1}),
         (FOMAML, {"inner_steps": 5}), (MAML, {"inner_steps": 2, "learn_inner_lr": True}),
         (MetaSGD, {}), (MetaSGD, {"first_order": True}), (ANIL, {"inner_steps": 5}),
         (ANIL, {"inner_steps": 1, "first_order": True})]


@pytest.mark.parametrize("net", [tiny_conv, tiny_resnet], ids=["conv4", "resnet"])
@pytest.mark.parametrize("cls,options", CASES, ids=lambda c: getattr(c, "name", None) or str(c))
def test_batched_equals_per_task(net, cls, options):
    method = build(cls, net, inner_lr=0.3, **options)
    assert method._batched_model() is not None and method.unbatched_reason is None
    eps = episodes()
    assert_same(loss_and_grads(method, eps, True), loss_and_grads(method, eps, False))


def test_chunks_and_mixed_shapes_give_the_same_meta_gradient():
    method = build(MAML, tiny_conv, inner_steps=2)
    eps = episodes(5) + episodes(2, way=2, shot=1, query=3, seed=1)  # two shapes: two groups
    assert [len(c) for c in method._chunks(eps)] == [5, 2]
    method.task_chunk = 2
    assert [len(c) for c in method._chunks(eps)] == [2, 2, 1, 2]
    reference = loss_and_grads(method, eps, False)
    for chunk in (None, 2, 1):
        assert_same(loss_and_grads(method, eps, True, chunk), reference)


def test_reptile_batched_equals_per_task():
    eps = episodes(4)
    results = []
    for batched in (True, False):
        method = build(Reptile, tiny_resnet, inner_steps=3, inner_lr=0.2, momentum=0.5)
        results.append(loss_and_grads(method, eps, batched))
    assert_same(*results)


class Scale(nn.Module):
    """A layer the batched path does not know."""

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x):
        return x * self.scale


def unknown_net():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), Scale(3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten())


def test_an_unknown_layer_falls_back_to_the_per_task_loop_and_matches_a_plain_loop():
    method = build(MAML, unknown_net, inner_steps=2, inner_lr=0.2)
    assert method._batched_model() is None
    assert "Scale" in method.unbatched_reason and "backbone.2" in method.unbatched_reason
    eps = episodes()
    params = dict(method.named_parameters())
    none = {n: None for n, _ in method.named_buffers()}
    total = 0
    for ep in eps:
        fast = params
        for _ in range(2):
            loss = F.cross_entropy(functional_call(method, (fast, none), (ep.support_x,)), ep.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {n: p - 0.2 * g for (n, p), g in zip(fast.items(), grads)}
        total = total + F.cross_entropy(functional_call(method, (fast, none), (ep.query_x,)), ep.query_y)
    reference = torch.autograd.grad(total / len(eps), list(params.values()))
    loss, _ = method.loss(eps)
    assert loss.item() == pytest.approx((total / len(eps)).item(), rel=1e-12)
    for a, b in zip(torch.autograd.grad(loss, list(params.values())), reference):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_unbatchable_layer_names_what_it_does_not_know():
    assert unbatchable_layer(tiny_resnet()) is None and unbatchable_layer(tiny_conv()) is None
    assert "PReLU" in unbatchable_layer(nn.Sequential(nn.Linear(2, 2), nn.PReLU()))
    assert "Flatten" in unbatchable_layer(nn.Flatten(0))
    assert "reflect" in unbatchable_layer(nn.Conv2d(1, 1, 3, padding_mode="reflect"))

    class Custom(nn.Sequential):  # a Sequential whose forward is not Sequential's
        def forward(self, x):
            return super().forward(x) * 2

    assert "Custom" in unbatchable_layer(Custom(nn.ReLU()))


@pytest.mark.parametrize("mode", ["task", "running"])
def test_task_batched_pass_equals_per_task_passes(mode):
    torch.manual_seed(0)
    model = nn.Sequential(tiny_resnet(), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh()).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    tasks, x = 4, torch.rand(4, 6, 1, 8, 8, dtype=torch.float64)
    params = {n: p + 0.1 * torch.randn(tasks, *p.shape, dtype=p.dtype) for n, p in model.named_parameters()}
    out = TaskBatched([("", model)], mode)(params, x)
    single = FunctionalModule(model, mode)
    want = torch.stack([single({n: p[t] for n, p in params.items()}, x[t]) for t in range(tasks)])
    assert out.shape == (4, 6, 5) and torch.allclose(out, want, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_meta_gradient_on_cuda_matches_cpu():
    cpu = build(MAML, tiny_conv, inner_steps=2)
    gpu = build(MAML, tiny_conv, inner_steps=2).cuda()
    eps = episodes()
    on_gpu = [Episode(e.support_x.cuda(), e.support_y.cuda(), e.query_x.cuda(), e.query_y.cuda(), e.way, e.shot)
              for e in eps]
    a, b = loss_and_grads(cpu, eps, True), loss_and_grads(gpu, on_gpu, True)
    assert a[0] == pytest.approx(b[0], rel=1e-9)
    for x, y in zip(a[1], b[1]):
        assert torch.allclose(x, y.cpu(), rtol=1e-7, atol=1e-10)


def test_float32_meta_gradient_is_as_precise_as_a_plain_channels_first_loop():
    """Issue 16's precision defect: on random images with many queries, fewshot's float32
    meta-gradient must be no further from the float64 one than a plain loop's is."""
    way, query = 5, 15
    g = torch.Generator().manual_seed(0)
    labels = lambda k: torch.arange(way).repeat_interleave(k)  # noqa: E731
    eps = [Episode(torch.rand(way, 1, 28, 28, generator=g), labels(1), torch.rand(way * query, 1, 28, 28, generator=g),
                   labels(query), way, 1) for _ in range(2)]
    torch.manual_seed(0)
    base = MAML(Conv4(1, width=8), way=way, image_shape=(1, 28, 28), inner_steps=1, inner_lr=0.4)

    def plain(model, episodes):
        params = dict(model.named_parameters())
        none = {n: None for n, _ in model.named_buffers()}
        total = 0
        for ep in episodes:
            loss = F.cross_entropy(functional_call(model, (params, none), (ep.support_x,)), ep.support_y)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            fast = {n: p - 0.4 * gr for (n, p), gr in zip(params.items(), grads)}
            total = total + F.cross_entropy(functional_call(model, (fast, none), (ep.query_x,)), ep.query_y)
        return total / len(episodes)

    def gradient(kind):
        model = base.__class__(Conv4(1, width=8), way=way, image_shape=(1, 28, 28), inner_steps=1, inner_lr=0.4)
        model.load_state_dict(base.state_dict())
        episodes = eps
        if kind == "float64":
            model = model.double()
            episodes = [Episode(e.support_x.double(), e.support_y, e.query_x.double(), e.query_y, way, 1) for e in eps]
        if kind in ("float64", "plain"):
            if kind == "plain":  # channels-first, as most MAML code has it
                model.backbone = nn.Sequential(*model.backbone).to(memory_format=torch.contiguous_format)
            loss = plain(model, episodes)
        else:
            model.task_batching = kind == "batched"
            model.task_chunk = 2 if kind == "batched" else None  # both tasks in one batched pass, whatever the default
            loss = model.loss(episodes)[0]
        return torch.cat([g.reshape(-1).double() for g in torch.autograd.grad(loss, list(model.parameters()))])

    exact = gradient("float64")
    error = {k: float((gradient(k) - exact).abs().max() / exact.abs().max()) for k in ("plain", "batched", "per-task")}
    assert error["batched"] <= 2 * error["plain"] + 1e-7, error
    assert error["per-task"] <= 2 * error["plain"] + 1e-7, error


def linear_on_maps():
    """Known layers, one used as the batched path cannot: a Linear on 4-d feature maps."""
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Linear(8, 4), nn.ReLU(), nn.Flatten())


@pytest.mark.parametrize("cls,options", [(MAML, {"inner_steps": 2}), (Reptile, {"inner_steps": 2})])
def test_a_layer_used_unbatchably_falls_back_at_run_time_and_matches(cls, options):
    eps = episodes()
    per_task = build(cls, linear_on_maps, **options)
    method = build(cls, linear_on_maps, **options)
    assert method._batched_model() is not None  # the static check passes
    got = loss_and_grads(method, eps, True)
    assert "Linear" in method.unbatched_reason and method._batched_model() is None
    assert_same(got, loss_and_grads(per_task, eps, False))


def convolution_inputs(profiled) -> list[tuple]:
    """Input shapes of every ``aten::convolution`` a ``torch.profiler`` run recorded."""
    return [tuple(e.input_shapes[0]) for e in profiled.events() if e.name == "aten::convolution"]


@pytest.mark.parametrize("dims, bias, stride, groups", [(2, True, 1, 1), (2, False, 2, 3), (1, True, 1, 3)])
def test_conv_fixed_input_matches_pytorch_to_second_order_without_the_input_gradient(dims, bias, stride, groups):
    torch.manual_seed(0)
    x = torch.randn((4, 6) + (7,) * dims, dtype=torch.float64)
    w = torch.randn((9, 6 // groups) + (3,) * dims, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, requires_grad=True) if bias else None
    leaves = [w] + ([b] if bias else [])
    conv = F.conv2d if dims == 2 else F.conv1d

    def second(run):
        y = run()
        grads = torch.autograd.grad(y.pow(2).sum(), leaves, create_graph=True)
        fast = [p - 0.1 * g for p, g in zip(leaves, grads)]
        outer = run(*fast).sin().sum() + sum((g * g).sum() for g in grads)
        return [y.detach(), *grads, *torch.autograd.grad(outer, leaves)]

    args = (stride, 1, 1, groups)
    theirs = second(lambda w=w, b=b: conv(x, w, b, *args))
    with torch.profiler.profile(record_shapes=True) as profiled:
        ours = second(lambda w=w, b=b: conv_fixed_input(x, w, b, (stride,) * dims, (1,) * dims, (1,) * dims, groups))
    for a, c in zip(ours, theirs):
        assert torch.allclose(a, c, rtol=1e-10, atol=1e-12)
    # Every convolution it ran reads the images (forward passes and the double backward's
    # one): none computes a gradient for them, which PyTorch's double backward would.
    inputs = convolution_inputs(profiled)
    assert len(inputs) >= 3 and all(shape == tuple(x.shape) for shape in inputs)
    with pytest.raises(ValueError, match="no gradient"):
        conv_fixed_input(x.requires_grad_(), w, b, (1,) * dims, (1,) * dims, (1,) * dims, 1)


def test_channels_last_sets_strides_even_for_one_channel():
    one = torch.rand(3, 1, 5, 5)
    view = channels_last(one)
    assert view.is_contiguous(memory_format=torch.channels_last) and view.data_ptr() == one.data_ptr()
    assert view.stride(1) == 1 and torch.equal(view, one)
    many = channels_last(torch.rand(3, 4, 5, 5))
    assert many.is_contiguous(memory_format=torch.channels_last) and not many.is_contiguous()


def test_conv_fixed_input_under_autocast_computes_as_f_conv2d_does():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    results = []
    for conv in (lambda: F.conv2d(x, w, b, 1, 1), lambda: conv_fixed_input(x, w, b, (1, 1), (1, 1), (1, 1), 1)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv()
            grads = torch.autograd.grad(y.float().pow(2).sum(), (w, b), create_graph=True)
            outer = torch.autograd.grad(sum(g.float().pow(2).sum() for g in grads), (w, b))
        results.append([t.detach() for t in (y, *grads, *outer)])
    for a, c in zip(*results):
        assert a.dtype == c.dtype
        assert torch.allclose(a.float(), c.float(), rtol=2e-2, atol=2e-2 * float(c.float().abs().max()))
