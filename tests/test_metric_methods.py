"""Prototypical (normalised), Matching and Relation Networks and the task-conditioned
network: their classifiers, invariances, learning, and the trainer/CLI round trip."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fewshot.cli import main
from fewshot.config import TrainConfig
from fewshot.data import EpisodeSampler, from_arrays
from fewshot.errors import ConfigError
from fewshot.evaluate import evaluate
from fewshot.methods import METHODS, MatchingNet, ProtoNet, RelationNet, build_method
from fewshot.models import MLP, Conv4

from core_fixtures import digits8  # noqa: F401  (fixture)

FLAT, IMAGE = (10, 1, 1), (1, 8, 8)


# name -> (method, backbone factory, image shape, options)
CASES = {
    "protonet-normalize": ("protonet", lambda: MLP(10, (32,)), FLAT, {"normalize": True}),
    "protonet-normalize-cosine": ("protonet", lambda: MLP(10, (32,)), FLAT, {"normalize": True, "distance": "cosine"}),
    "matchingnet": ("matchingnet", lambda: MLP(10, (32,)), FLAT, {}),
    "matchingnet-fce": ("matchingnet", lambda: MLP(10, (32,)), FLAT, {"fce": True, "fce_steps": 3}),
    "relationnet-conv": ("relationnet", lambda: Conv4(1, width=8, depth=2), IMAGE, {}),
    "relationnet-mlp": ("relationnet", lambda: MLP(10, (32,)), FLAT, {"relation": "mlp"}),
    "relationnet-ce": ("relationnet", lambda: MLP(10, (32,)), FLAT, {"relation": "mlp", "loss": "ce"}),
    "taskcond-conv": ("taskcond", lambda: Conv4(1, width=8, depth=2), IMAGE, {}),
    "taskcond-mlp": ("taskcond", lambda: MLP(10, (32,)), FLAT, {}),
    "taskcond-features": ("taskcond", lambda: MLP(10, (32,)), FLAT, {"condition": "features", "distance": "cosine"}),
}


def build(case: str, seed: int = 0):
    name, backbone, shape, options = CASES[case]
    torch.manual_seed(seed)
    return build_method(name, backbone(), image_shape=shape, way=3, **options)


def clusters(shape, seed: int = 0):
    """24 well-separated classes of 20 examples: 18 to train on, 6 novel ones to test."""
    g = torch.Generator().manual_seed(seed)
    if shape == FLAT:
        centers = torch.randn(24, 10, generator=g) * 3
        noise = 0.5 * torch.randn(24 * 20, 10, generator=g)
    else:
        centers = torch.rand(24, *shape, generator=g)
        noise = 0.1 * torch.randn(24 * 20, *shape, generator=g)
    y = torch.arange(24).repeat_interleave(20)
    return from_arrays(centers[y] + noise, y, splits={"train": list(range(18)), "test": list(range(18, 24))})


def warm_batchnorm(method, shape):
    """Give BatchNorm running statistics that are not the identity, so eval mode is a real test."""
    method.train()
    with torch.no_grad():
        for _ in range(3):
            method.loss(EpisodeSampler(clusters(shape), "train", 3, 2, 2).batch(0, 1))
    return method.eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_support_order_and_label_permutation(case):
    name, _, shape, _ = CASES[case]
    method = warm_batchnorm(build(case), shape)
    g = torch.Generator().manual_seed(1)
    support, query = torch.randn(9, *shape, generator=g), torch.randn(5, *shape, generator=g)
    labels = torch.arange(3).repeat_interleave(3)
    with torch.no_grad():
        base = method.adapt(support, labels, 3)(query)
        order = torch.randperm(9, generator=g)
        shuffled = method.adapt(support[order], labels[order], 3)(query)
        perm = torch.tensor([2, 0, 1])  # class c becomes perm[c]
        permuted = method.adapt(support, perm[labels], 3)(query)
    assert base.shape == (5, 3)
    assert torch.allclose(shuffled, base, atol=1e-4), case
    assert torch.allclose(permuted[:, perm], base, atol=1e-4), case


@pytest.mark.parametrize("case", sorted(CASES))
def test_learns_a_separable_task_in_a_few_steps(case):
    name, _, shape, _ = CASES[case]
    data = clusters(shape)
    method = build(case)
    opt = torch.optim.Adam(method.parameters(), 1e-2)
    sampler = EpisodeSampler(data, "train", 3, 1, 5)
    accuracies = []
    for step in range(40):
        loss, metrics = method.loss(sampler.batch(step, 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        accuracies.append(metrics["accuracy"])
    assert sum(accuracies[-5:]) / 5 > 95, (case, accuracies[-5:])
    result = evaluate(method, EpisodeSampler(data, "test", 3, 1, 10), 10, progress=False)
    assert result.accuracy > 90, (case, result.accuracy)


def test_registered_names_and_bad_options():
    assert {"protonet", "matchingnet", "relationnet", "mann", "taskcond"} <= set(METHODS)
    for name, options, fragment in [
        ("relationnet", {"relation": "graph"}, "'relation' must be one of conv, mlp, got 'graph'"),
        ("relationnet", {"loss": "hinge"}, "'loss' must be one of mse, ce, got 'hinge'"),
        ("relationnet", {"unpooled_blocks": 5}, "unpooled_blocks=5"),
        ("matchingnet", {"fce_steps": 0}, "fce_steps"),
        ("taskcond", {"condition": "everything"}, "condition.*'everything'"),
        ("protonet", {"normalize": "yes"}, "normalize"),
        ("matchingnet", {"temperature": 3}, "has no option 'temperature'"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            build_method(name, Conv4(1, width=8, depth=2), image_shape=IMAGE, way=3, **options)
    with pytest.raises(ConfigError, match="ending in Flatten"):
        RelationNet(MLP(10, (8,)), image_shape=FLAT)
    with pytest.raises(ConfigError, match="image_shape"):
        MatchingNet(MLP(10, (8,)), fce=True)


# -- Prototypical Networks, normalised ---------------------------------------------------

def test_protonet_normalize_centres_and_l2_normalises():
    method = ProtoNet(torch.nn.Identity(), normalize=True)
    assert method.scale.requires_grad and method.scale.item() == 10.0
    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = method.adapt(support, labels, 3)(query)
    centre = torch.stack([support[labels == c].mean(0) for c in range(3)]).mean(0)
    s, q = F.normalize(support - centre, dim=1), F.normalize(query - centre, dim=1)
    prototypes = torch.stack([s[labels == c].mean(0) for c in range(3)])
    assert torch.allclose(logits, -10.0 * torch.cdist(q, prototypes).pow(2), atol=1e-5)
    # The default model is unchanged: no scale parameter, same options.
    assert "scale" not in ProtoNet(torch.nn.Identity()).state_dict()
    assert ProtoNet(torch.nn.Identity()).get_params() == {"distance": "euclidean", "normalize": False, "test_views": 1}


# -- Matching Networks -----------------------------------------------------------------

@pytest.mark.parametrize("scale", [None, 10.0])
def test_matching_logits_are_log_attention_over_support_labels(scale):
    method = MatchingNet(torch.nn.Identity(), scale=scale)
    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.no_grad():
        logits = method.adapt(support, labels, 3)(query)
    cosine = F.cosine_similarity(query[:, None], support[None], dim=2)
    attention = torch.softmax(cosine * (scale or 1.0), dim=1)  # None: the paper's unscaled cosine
    expected = torch.stack([attention[:, labels == c].sum(1) for c in range(3)], dim=1)
    assert torch.allclose(logits.exp(), expected, atol=1e-5)
    assert torch.allclose(logits.exp().sum(1), torch.ones(5), atol=1e-5)
    assert ("scale" in method.state_dict()) == (scale is not None)  # learned when given


def test_matching_fce_reads_the_whole_support_set():
    torch.manual_seed(0)
    method = MatchingNet(MLP(4, (8,)), image_shape=(4, 1, 1), fce=True).eval()
    support, labels, query = torch.randn(6, 4, 1, 1), torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(3, 4, 1, 1)
    with torch.no_grad():
        base = method.adapt(support, labels, 3)(query)
        changed = support.clone()
        changed[5] += 1.0  # one support example of class 2 changes ...
        other = method.adapt(changed, labels, 3)(query)
    # ... and, through the context embeddings, the attention to every other example changes too.
    plain = MatchingNet(method.backbone).eval()
    with torch.no_grad():
        plain_base = plain.adapt(support[:4], labels[:4], 3)(query)
        plain_other = plain.adapt(changed[:4], labels[:4], 3)(query)
    assert torch.equal(plain_base, plain_other)
    assert not torch.allclose(base, other)
    assert set(method.get_params()) == {"image_shape", "fce", "fce_steps", "scale"}


# -- Relation Networks -----------------------------------------------------------------

def test_relation_conv_keeps_feature_maps_and_averages_k_shot():
    method = RelationNet(Conv4(1, width=8, depth=4), image_shape=(1, 28, 28))
    features = method._encode(torch.zeros(2, 1, 28, 28))
    assert features.shape == (2, 8, 7, 7)  # the last two blocks unpooled, as in the paper
    maps = torch.randn(6, 8, 7, 7)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert method.aggregate == "mean"
    assert torch.allclose(method._class_features(maps, labels, 3)[1], (maps[1] + maps[4]) / 2, atol=1e-6)
    summed = RelationNet(Conv4(1, width=8, depth=4), image_shape=(1, 28, 28), aggregate="sum")
    assert torch.allclose(summed._class_features(maps, labels, 3)[1], maps[1] + maps[4], atol=1e-6)


def test_relation_sum_is_the_mean_model_at_the_training_shot():
    """At K shots the paper's sum is K times the mean; scaling the relation module's
    class-half first-layer weights by K turns a mean model into the sum model exactly."""
    torch.manual_seed(0)
    mean = RelationNet(Conv4(1, width=8, depth=4), image_shape=(1, 28, 28)).eval()
    summed = RelationNet(Conv4(1, width=8, depth=4), image_shape=(1, 28, 28), aggregate="sum").eval()
    summed.load_state_dict(mean.state_dict())
    k = 5
    with torch.no_grad():
        summed.relation.convs[0].weight[:, :8] /= k  # the class half of the concatenated pair
    support, labels = torch.rand(3 * k, 1, 28, 28), torch.arange(3).repeat(k)
    query = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(summed.adapt(support, labels, 3)(query), mean.adapt(support, labels, 3)(query),
                              atol=1e-4)


def test_relation_mean_keeps_a_one_shot_models_input_scale_at_more_shots():
    """The 5-shot collapse of a 1-shot model: with the sum, K copies of one support image
    are a class feature K times larger than any seen in training; with the mean, they are
    exactly the 1-shot class feature."""
    torch.manual_seed(0)
    support, query = torch.rand(3, 1, 28, 28), torch.rand(4, 1, 28, 28)
    labels = torch.arange(3)
    for aggregate, same in (("mean", True), ("sum", False)):
        method = warm_batchnorm(RelationNet(Conv4(1, width=8, depth=4), image_shape=(1, 28, 28),
                                            aggregate=aggregate), (1, 28, 28))
        with torch.no_grad():
            one = method.adapt(support, labels, 3)(query)
            five = method.adapt(support.repeat(5, 1, 1, 1), labels.repeat(5), 3)(query)
        assert torch.allclose(one, five, atol=1e-5) == same, aggregate


def test_relation_modules_score_the_concatenated_pairs():
    torch.manual_seed(0)
    conv = RelationNet(Conv4(1, width=8, depth=4), image_shape=(1, 28, 28)).eval()
    classes, query = torch.randn(3, 8, 7, 7), torch.randn(4, 8, 7, 7)
    pairs = torch.cat([classes[None].expand(4, 3, 8, 7, 7), query[:, None].expand(4, 3, 8, 7, 7)], dim=2)
    naive = conv.relation.head(conv.relation.convs(pairs.flatten(0, 1))).view(4, 3)
    assert torch.allclose(conv._scores(classes, query), naive, atol=1e-4)
    mlp = RelationNet(MLP(10, (16,)), image_shape=FLAT, relation="mlp")
    classes, query = torch.randn(3, 16), torch.randn(4, 16)
    pairs = torch.cat([classes[None].expand(4, 3, 16), query[:, None].expand(4, 3, 16)], dim=2)
    naive = mlp.relation.out(torch.relu(mlp.relation.first(pairs)))[..., 0]
    assert torch.allclose(mlp._scores(classes, query), naive, atol=1e-5)


@pytest.mark.parametrize("relation", ["conv", "mlp"])
def test_relation_scores_in_unit_interval_per_pair_trained_with_mse(relation):
    torch.manual_seed(0)
    if relation == "conv":
        method, shape = RelationNet(Conv4(1, width=8, depth=2), image_shape=IMAGE), IMAGE
    else:
        method, shape = RelationNet(MLP(10, (16,)), image_shape=FLAT, relation="mlp"), FLAT
    ep = EpisodeSampler(clusters(shape), "train", 3, 2, 2).episode(0)
    method.eval()  # BatchNorm by running statistics: the loss and the predictor see the same features
    loss, _ = method.loss([ep])
    scores = method.relation_scores(ep.support_x, ep.support_y, 3, ep.query_x)
    assert scores.shape == (len(ep.query_x), 3)  # one score per (query, class) pair
    assert bool(((scores >= 0) & (scores <= 1)).all())
    expected = F.mse_loss(scores, F.one_hot(ep.query_y, 3).float())
    assert torch.allclose(loss, expected, atol=1e-5)
    # And training lowers exactly that squared error.
    method.train()
    opt = torch.optim.Adam(method.parameters(), 1e-2)
    for _ in range(15):
        opt.zero_grad()
        method.loss([ep])[0].backward()
        opt.step()
    assert method.loss([ep])[0] < 0.5 * loss


# -- the trainer and the command line ----------------------------------------------------

@pytest.mark.parametrize("name, options", [
    ("matchingnet", ["fce=true"]), ("relationnet", []), ("taskcond", []), ("mann", ["controller_size=16"]),
    ("protonet", ["normalize=true"]),
])
def test_cli_trains_and_evaluates(name, options, tmp_path, digits8, capsys):
    out = tmp_path / name
    args = ["train", name, "--dataset", "digits", "--backbone-option", "width=8", "--backbone-option", "depth=2",
            "--way", "3", "--shot", "1", "--query", "2", "--episodes", "3", "--val-split", "none", "--quiet",
            "--out", str(out), "--runs", str(tmp_path)]
    for option in options:
        args += ["-o", option]
    assert main(args) == 0, capsys.readouterr().err
    assert main(["evaluate", str(out), "--episodes", "4", "--quiet", "--json", "--runs", str(tmp_path)]) == 0
    assert '"accuracy"' in capsys.readouterr().out


def test_every_recipe_in_configs_is_a_valid_training_config():
    files = sorted((Path(__file__).parents[1] / "configs").glob("*.json"))
    assert len(files) >= 6
    for path in files:
        config = TrainConfig.layered(path)
        assert config.method in METHODS and config.dataset == "omniglot", path.name
        assert config.val_split == "val", path.name  # the best checkpoint is chosen on the val split
        assert json.loads(path.read_text())["dataset_options"]["rotations"] is True, path.name
    relation = {p.stem: TrainConfig.layered(p) for p in files if p.stem.startswith("relationnet")}
    # Sung et al. 2018, section 4.1: 19, 15, 10 and 5 query images per class in training episodes.
    shapes = {"5w1s": (5, 1, 19), "5w5s": (5, 5, 15), "20w1s": (20, 1, 10), "20w5s": (20, 5, 5)}
    for setting, shape in shapes.items():
        assert relation[f"relationnet-omniglot-{setting}"].train_shape == shape
