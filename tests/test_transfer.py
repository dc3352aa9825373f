"""Transfer strategies: what is frozen stays bit-identical, learning rates, schedules,
LP-FT, cross-validation, user backbones, and that adaptation leaves no trace."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data import EpisodeSampler, from_arrays
from fewshot.errors import ConfigError
from fewshot.evaluate import evaluate
from fewshot.methods import ProtoNet
from fewshot.methods.strategies import STRATEGIES, discriminative_rates, gradual_schedule
from fewshot.methods.transfer import FineTune, adapt_method, cv_folds, wrap
from fewshot.models.blocks import split_blocks
from fewshot.models.heads import CosineHead, logistic_probe
from fewshot.models import MLP, Conv4

torch.set_num_threads(1)


def blobs(classes=8, per_class=12, dim=8, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * spread
    y = torch.arange(classes).repeat_interleave(per_class)
    return centers[y] + torch.randn(len(y), dim, generator=g), y


def task(way=4, shot=3, dim=8, seed=0):
    x, y = blobs(way, shot + 10, dim, seed)
    data = from_arrays(x, y, splits={"test": list(range(way))})
    ep = EpisodeSampler(data, "test", way, shot, 10).episode(0)
    return ep


def image_task(way=3, shot=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(way, 1, 16, 16, generator=g)
    y = torch.arange(way).repeat_interleave(shot + 4)
    x = (protos[y] + 0.2 * torch.rand(len(y), 1, 16, 16, generator=g)).clamp(0, 1)
    data = from_arrays(x, y, splits={"test": list(range(way))})
    return EpisodeSampler(data, "test", way, shot, 4).episode(0)


def conv():
    torch.manual_seed(0)
    return Conv4(1, width=8, depth=2)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- blocks ----------------------------------------------------------------------------------

def test_blocks_of_sequential_backbones_skip_parameter_free_layers():
    assert [b.name for b in split_blocks(conv())] == ["0", "1"]  # Flatten dropped
    mlp = MLP(8, (16, 16))
    blocks = split_blocks(mlp)
    assert [b.name for b in blocks] == ["1", "3"]  # the Linear layers; Flatten and ReLU hold nothing
    assert [b.child for b in blocks] == [1, 3]
    assert sum(b.size for b in blocks) == sum(p.numel() for p in mlp.parameters())


def test_blocks_of_other_modules_and_explicit_names():
    class Wrapper(nn.Module):  # one child with parameters: split through it
        def __init__(self):
            super().__init__()
            self.body = MLP(8, (16, 16))

        def forward(self, x):
            return self.body(x)

    assert [b.name for b in split_blocks(Wrapper())] == ["body.1", "body.3"]
    net = UserNet()
    assert [b.name for b in split_blocks(net)] == ["stem", "bn", "fc"]
    assert [b.name for b in split_blocks(net, ["stem", "fc"])] == ["stem", "fc"]
    with pytest.raises(ConfigError, match="no sub-module 'nope'"):
        split_blocks(net, ["nope"])


# -- freezing --------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy, options, frozen", [
    ("linear-probe", {}, {0, 1}),
    ("freeze-k", {"k": 1}, {0}),
    ("surgical", {"block": 0}, {1}),
    ("surgical", {"block": -1}, {0}),
    ("finetune", {}, set()),
    ("gradual-unfreeze", {"steps": 6, "unfreeze_every": 4}, {0}),  # block 0's turn (step 8) never comes
])
def test_frozen_parameters_stay_bit_identical(strategy, options, frozen):
    backbone = conv()
    ep = image_task()
    before = snapshot(backbone)
    method = FineTune(backbone, strategy, steps=6, lr=0.05, **{k: v for k, v in options.items() if k != "steps"})
    net, head, info = method.fit(ep.support_x, ep.support_y, ep.way)
    for i, block in enumerate(split_blocks(net)):
        original = [p for n, p in backbone.named_parameters() if n.startswith(f"{block.name}.")]
        changed = [not torch.equal(a, b) for a, b in zip(block.params, original)]
        if i in frozen:
            assert not any(changed), f"block {i} was frozen but changed"
        else:
            assert any(changed), f"block {i} should have been tuned"
    assert same(snapshot(backbone), before)  # the trained model itself is never touched


def test_adaptation_leaves_no_trace_and_is_deterministic():
    backbone = conv()
    backbone.train()  # even in train mode, BatchNorm's running statistics must not move
    ep = image_task()
    before = snapshot(backbone)
    for bn in ("eval", "batch"):
        method = FineTune(backbone, "finetune", steps=3, bn=bn)
        first = method.adapt(ep.support_x, ep.support_y, ep.way)(ep.query_x)
        second = method.adapt(ep.support_x, ep.support_y, ep.way)(ep.query_x)
        assert torch.equal(first, second)
    assert same(snapshot(backbone), before)


# -- learning rates and schedules -------------------------------------------------------------

def test_discriminative_learning_rates_land_in_the_right_parameter_groups():
    assert discriminative_rates(3, 0.1, 0.5) == pytest.approx([0.025, 0.05, 0.1])
    net = MLP(8, (16, 16, 16))
    ep = task()
    method = FineTune(net, "discriminative", lr=0.2, backbone_lr=0.04, decay=0.5, steps=1)
    _, _, info = method.fit(ep.support_x, ep.support_y, ep.way)
    groups = {name: (lr, params) for name, lr, params in info["groups"]}
    assert groups["head"] == (0.2, ["head.weight", "head.bias"])
    assert groups["block2:5"] == (pytest.approx(0.04), ["backbone.5.weight", "backbone.5.bias"])
    assert groups["block1:3"] == (pytest.approx(0.02), ["backbone.3.weight", "backbone.3.bias"])
    assert groups["block0:1"] == (pytest.approx(0.01), ["backbone.1.weight", "backbone.1.bias"])
    # plain fine-tuning: one lower rate for the whole backbone (a tenth of the head's by default)
    _, _, info = FineTune(net, "finetune", lr=0.2, steps=1).fit(ep.support_x, ep.support_y, ep.way)
    assert [lr for name, lr, _ in info["groups"] if name != "head"] == pytest.approx([0.02] * 3)


def test_gradual_unfreezing_goes_from_the_head_down():
    assert gradual_schedule(4, 50) == [(10, 3), (20, 2), (30, 1), (40, 0)]
    assert gradual_schedule(3, 7, every=3) == [(3, 2), (6, 1)]
    net = MLP(8, (16, 16, 16))
    ep = task()
    before = snapshot(net)
    method = FineTune(net, "gradual-unfreeze", steps=8, unfreeze_every=2, lr=0.05)
    adapted, _, info = method.fit(ep.support_x, ep.support_y, ep.way)
    assert info["trainable"] == []  # the head alone at first
    assert info["unfrozen"] == [(2, 2), (4, 1), (6, 0)]
    # the later a block joined, the fewer updates: the bottom block joined last but did move
    assert not torch.equal(adapted[1].weight, before["1.weight"])


# -- LP-FT -----------------------------------------------------------------------------------

def test_lp_ft_fine_tunes_from_the_probe_head():
    net = MLP(8, (16,))
    ep = task()
    with torch.no_grad():
        features = net.eval()(ep.support_x)
    probe = logistic_probe(features, ep.support_y, ep.way, C=1.0)
    # zero fine-tuning steps: the head is exactly the probe's
    _, head, info = FineTune(net, "lp-ft", steps=0).fit(ep.support_x, ep.support_y, ep.way)
    assert torch.allclose(head.weight, probe.weight) and torch.allclose(head.bias, probe.bias)
    # with fine-tuning, it starts there and moves on
    _, head, info = FineTune(net, "lp-ft", steps=5, lr=0.05).fit(ep.support_x, ep.support_y, ep.way)
    assert info["head"] == "probe"
    assert torch.allclose(info["initial_head"]["weight"], probe.weight)
    assert not torch.allclose(head.weight, probe.weight)
    # plain fine-tuning starts from a random head instead
    _, _, info = FineTune(net, "finetune", steps=1).fit(ep.support_x, ep.support_y, ep.way)
    assert not torch.allclose(info["initial_head"]["weight"], probe.weight)
    with pytest.raises(ConfigError, match="lp-ft starts fine-tuning from the linear probe"):
        FineTune(net, "lp-ft", head="reinit")


def test_linear_probe_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    ep = task()
    net = nn.Flatten()
    method = FineTune(net, "linear-probe", C=0.5)
    logits = method.adapt(ep.support_x, ep.support_y, ep.way)(ep.query_x)
    reference = LogisticRegression(C=0.5, max_iter=1000).fit(ep.support_x.flatten(1).double().numpy(),
                                                               ep.support_y.numpy())
    expected = reference.predict(ep.query_x.flatten(1).double().numpy())
    assert (logits.argmax(1).numpy() == expected).all()
    two = logistic_probe(torch.randn(6, 3), torch.tensor([0, 0, 0, 2, 2, 2]), way=3)
    out = two(torch.randn(4, 3))
    assert (out.argmax(1) != 1).all()  # an absent class is never predicted


# -- cross-validation ------------------------------------------------------------------------

def test_cv_folds_are_stratified_and_leave_one_out_at_one_shot():
    labels = torch.arange(3).repeat_interleave(4)
    folds = cv_folds(labels, max_folds=2)
    assert len(folds) == 2
    for train, held in folds:
        assert sorted(labels[held].tolist()) == [0, 0, 1, 1, 2, 2]
        assert set(labels[train].tolist()) == {0, 1, 2}
    one = cv_folds(torch.arange(4), max_folds=5)
    assert len(one) == 4
    for train, held in one:
        (i,) = held
        assert -1 - i in train and i not in train  # the held-out example's augmented copy trains


def test_cross_validation_picks_the_best_setting():
    ep = task(way=4, shot=3)
    torch.manual_seed(0)
    method = FineTune(MLP(8, (16,)), "finetune", steps=15, cv=True, cv_grid={"lr": [1e-7, 0.1]})
    method.adapt(ep.support_x, ep.support_y, ep.way)
    report = method.last_fit["cv"]
    assert report["chosen"] == {"lr": 0.1} and report["folds"] == 3
    scores = {row["setting"]["lr"]: row["accuracy"] for row in report["scores"]}
    assert scores[0.1] > scores[1e-7]
    # steps are scored along one run; 0 steps leaves the random head
    method.set_test_options(cv_grid={"steps": [0, 15]}, lr=0.1)
    method.adapt(ep.support_x, ep.support_y, ep.way)
    assert method.last_fit["cv"]["chosen"] == {"steps": 15}
    # 1 shot: leave-one-out; logistic regression's C is chosen for a linear probe
    ep1 = task(way=3, shot=1)
    probe = FineTune(MLP(8, (16,)), "linear-probe", cv=True, cv_grid={"C": [1e-6, 10.0]})
    probe.adapt(ep1.support_x, ep1.support_y, ep1.way)
    assert probe.last_fit["cv"]["folds"] == 3 and probe.last_fit["cv"]["chosen"] == {"C": 10.0}
    with pytest.raises(ConfigError, match="cv_grid"):
        FineTune(MLP(8, (16,)), cv_grid={"strategy": ["finetune"]})


# -- user backbones and entry points ----------------------------------------------------------

class UserNet(nn.Module):
    """Not a Sequential: a stem, a norm, a projection."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 12)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.stem(x))), 4)
        return self.fc(x.flatten(1))


def test_a_user_supplied_backbone_works_with_every_strategy():
    torch.manual_seed(0)
    net = UserNet()
    ep = image_task(way=3, shot=2)
    before = snapshot(net)
    for strategy in STRATEGIES:
        method = wrap(net, strategy, steps=4, probe_steps=5)
        logits = method.adapt(ep.support_x, ep.support_y, ep.way)(ep.query_x)
        assert logits.shape == (len(ep.query_x), 3) and torch.isfinite(logits).all(), strategy
    assert same(snapshot(net), before)
    _, _, info = FineTune(net, "surgical", block=1, steps=2).fit(ep.support_x, ep.support_y, ep.way)
    assert [name for name, _, _ in info["groups"]] == ["head", "block1:bn"]
    # through the one evaluation path
    data = from_arrays(torch.rand(40, 1, 16, 16), torch.arange(4).repeat_interleave(10), splits={"test": [0, 1, 2, 3]})
    result = evaluate(wrap(net, "lp-ft", steps=2), EpisodeSampler(data, "test", 2, 1, 3), 3, progress=False)
    assert result.episodes == 3


def test_wrap_any_method_and_adapt_method_validates():
    torch.manual_seed(0)
    proto = ProtoNet(MLP(8, (16,)))
    method = adapt_method(proto, "lp-ft", steps=3)
    assert isinstance(method, FineTune) and method.backbone is proto.backbone
    assert method.get_params()["strategy"] == "lp-ft" and method.get_params()["steps"] == 3
    assert adapt_method(proto, "default") is proto
    with pytest.raises(ConfigError, match="unknown adaptation strategy 'fine-tune'"):
        adapt_method(proto, "fine-tune")
    with pytest.raises(ConfigError, match="takes no option lrr"):
        adapt_method(proto, "finetune", lrr=0.1)
    with pytest.raises(ConfigError, match="adapt-only"):
        method.loss([])
    with pytest.raises(ConfigError, match="head=keep needs the source model's head"):
        adapt_method(proto, "finetune", head="keep")


def test_keep_head_uses_the_source_head_when_it_fits():
    class WithHead(ProtoNet):
        def __init__(self):
            super().__init__(MLP(8, (16,)))
            self.head = nn.Linear(16, 4)

    source = WithHead()
    source.test_mode = "train"  # as the MAML family: batch statistics by default
    ep = task(way=4)
    method = wrap(source, "finetune", head="keep", steps=0)
    assert method.get_params()["bn"] == "batch"
    _, head, _ = method.fit(ep.support_x, ep.support_y, ep.way)
    assert torch.equal(head.weight, source.head.weight) and head is not source.head
    ep3 = task(way=3)
    with pytest.raises(ConfigError, match="source head gives"):
        method.fit(ep3.support_x, ep3.support_y, ep3.way)


def test_cosine_head():
    head = CosineHead(4, 3, learnable_norm=False)
    assert head.scale == 2.0 and CosineHead(4, 300).scale == 10.0
    f = torch.randn(5, 4)
    assert torch.allclose(head(f), 2.0 * F.normalize(f, dim=1) @ F.normalize(head.weight, dim=1).T, atol=1e-6)
    assert torch.allclose(head(3 * f), head(f), atol=1e-6)  # invariant to feature scale
    ep = task()
    method = FineTune(MLP(8, (16,)), "linear-probe", head_type="cosine", probe_steps=20)
    method.adapt(ep.support_x, ep.support_y, ep.way)
    assert method.get_params()["probe"] == "torch"  # logistic regression fits linear heads only
