"""FEAT (set-to-set adaptation of the prototypes): registration, gradients, permutation
equivariance, the reduction to ProtoNet when the attention says nothing, training on
separable clusters, options, and an adapt() that leaves no trace."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.episodes import Episode
from fewshot.errors import ConfigError
from fewshot.methods import METHODS, build_method
from fewshot.methods.feat import FEAT
from fewshot.methods.protonet import prototype_logits

D = 8


class Flat(nn.Module):
    """A backbone with one linear layer (identity at the start), so gradients reach parameters."""

    def __init__(self, d=D):
        super().__init__()
        self.linear = nn.Linear(d, d)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(d))
            self.linear.bias.zero_()

    def forward(self, x):
        return self.linear(x)


def feat(**options) -> FEAT:
    torch.manual_seed(0)
    return build_method("feat", Flat(), image_shape=(D,), **options)


def clusters(way=4, shot=2, query=5, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.eye(D)[:way]
    sx = centres.repeat_interleave(shot, 0) + noise * torch.randn(way * shot, D, generator=g)
    qx = centres.repeat_interleave(query, 0) + noise * torch.randn(way * query, D, generator=g)
    return Episode(sx, torch.arange(way).repeat_interleave(shot), qx, torch.arange(way).repeat_interleave(query),
                   way, shot)


def test_registered_with_its_options():
    assert METHODS["feat"] is FEAT
    params = feat().get_params()
    assert {k: params[k] for k in ("temperature", "temperature2", "balance", "dropout")} == {
        "temperature": 64.0, "temperature2": 16.0, "balance": 1.0, "dropout": 0.5}


def test_gradients_reach_the_backbone_and_the_attention_through_both_losses():
    method = feat().train()
    loss, metrics = method.loss([clusters(), clusters(seed=1)])
    loss.backward()
    assert torch.isfinite(loss) and 0 <= metrics["accuracy"] <= 100
    assert method.backbone.linear.weight.grad.abs().sum() > 0
    for name in ("query", "key", "value", "out"):
        assert getattr(method.attention, name).weight.grad.abs().sum() > 0, name
    # The regulariser alone also trains the set function and the backbone.
    method.zero_grad()
    ep = clusters()
    features = method.features(torch.cat([ep.support_x, ep.query_x]))
    method.regularizer(features, torch.cat([ep.support_y, ep.query_y]), ep.way).backward()
    assert method.attention.query.weight.grad.abs().sum() > 0 and method.backbone.linear.weight.grad.abs().sum() > 0


def test_the_regulariser_counts_in_training_only_and_with_its_weight():
    method, episode = feat(dropout=0.0), clusters()
    method.attention.attention_dropout.p = 0.0  # deterministic, so losses can be compared
    method.eval()
    plain, _ = method.loss([episode])
    method.train()
    with_regulariser, _ = method.loss([episode])
    features = method.features(torch.cat([episode.support_x, episode.query_x]))
    extra = method.regularizer(features, torch.cat([episode.support_y, episode.query_y]), episode.way)
    torch.testing.assert_close(with_regulariser, plain + extra)
    off = feat(balance=0.0, dropout=0.0)
    off.attention.attention_dropout.p = 0.0
    torch.testing.assert_close(off.train().loss([episode])[0], plain)


def test_permuting_the_classes_permutes_the_logits():
    method, episode = feat().eval(), clusters(way=5, shot=1)
    permutation = torch.tensor([3, 0, 4, 1, 2])  # class k becomes class permutation[k]
    with torch.no_grad():
        logits = method.adapt(episode.support_x, episode.support_y, 5)(episode.query_x)
        relabelled = method.adapt(episode.support_x, permutation[episode.support_y], 5)(episode.query_x)
    torch.testing.assert_close(relabelled[:, permutation], logits)
    # and the support order does not matter either
    order = torch.randperm(5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        shuffled = method.adapt(episode.support_x[order], episode.support_y[order], 5)(episode.query_x)
    torch.testing.assert_close(shuffled, logits)


def test_with_zero_attention_output_it_is_protonet_on_layer_normalised_prototypes():
    """The paper's layer is post-norm, LN(p + attention): with the attention's output
    zeroed the prototypes are only layer-normalised, and the logits are ProtoNet's against
    them, divided by the temperature; for 1-shot features that are already standardised
    (mean 0, variance 1 each), LN is the identity and FEAT's logits are ProtoNet's own / τ."""
    method, episode = feat(temperature=8.0).eval(), clusters()
    with torch.no_grad():
        method.attention.out.weight.zero_()
        method.attention.out.bias.zero_()
        logits = method.adapt(episode.support_x, episode.support_y, episode.way)(episode.query_x)
        prototypes = torch.stack([episode.support_x[episode.support_y == k].mean(0) for k in range(episode.way)])
        normed = F.layer_norm(prototypes, (D,))
    torch.testing.assert_close(logits, prototype_logits(episode.query_x, normed, "euclidean") / 8.0)

    one_shot = clusters(shot=1)
    standardise = lambda x: (x - x.mean(1, keepdim=True)) / x.var(1, unbiased=False, keepdim=True).sqrt()
    support, query = standardise(one_shot.support_x), standardise(one_shot.query_x)
    protonet = build_method("protonet", method.backbone).eval()
    with torch.no_grad():
        ours = method.adapt(support, one_shot.support_y, one_shot.way)(query)
        theirs = protonet.adapt(support, one_shot.support_y, one_shot.way)(query)
    torch.testing.assert_close(ours, theirs / 8.0, atol=1e-4, rtol=1e-4)  # LN's eps = 1e-5 on the variance


def test_trains_to_full_accuracy_on_separable_clusters_in_a_few_steps():
    method = feat()
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-2)
    method.train()
    for step in range(15):
        loss, _ = method.loss([clusters(seed=step, noise=0.5)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.eval()
    test = clusters(seed=100, noise=0.5)
    with torch.no_grad():
        logits = method.adapt(test.support_x, test.support_y, test.way)(test.query_x)
        _, metrics = method.loss([test])
    assert (logits.argmax(1) == test.query_y).all() and metrics["accuracy"] == 100.0


@pytest.mark.parametrize("options, message", [
    ({"temperature": 0.0}, "feat 'temperature' must be a finite number > 0"),
    ({"temperature2": -1.0}, "feat 'temperature2' must be a finite number > 0"),
    ({"balance": -0.5}, "feat 'balance' must be a finite number ≥ 0"),
    ({"dropout": 1.0}, "feat 'dropout' must be a finite number in [0, 1)"),
    ({"heads": 2}, "method 'feat' has no option 'heads'"),
])
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError) as info:
        build_method("feat", Flat(), image_shape=(D,), **options)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_needs_the_image_shape_to_size_its_set_function():
    with pytest.raises(ConfigError, match="feat needs image_shape"):
        build_method("feat", Flat())


def test_adapt_leaves_no_state_behind():
    method, episode = feat().eval(), clusters()
    before = copy.deepcopy(method.state_dict())
    attributes = set(vars(method))
    with torch.no_grad():
        first = method.adapt(episode.support_x, episode.support_y, episode.way)(episode.query_x)
        method.adapt(clusters(seed=5).support_x, episode.support_y, episode.way)(episode.query_x)  # another task
        again = method.adapt(episode.support_x, episode.support_y, episode.way)(episode.query_x)
    torch.testing.assert_close(again, first)
    assert set(vars(method)) == attributes and not method.training
    after = method.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
