"""Prototypical Networks: the paper's classifier, invariances, and learning."""

import torch
import torch.nn.functional as F

from fewshot.data import EpisodeSampler, from_arrays
from fewshot.methods import ProtoNet, build_method
from fewshot.methods.protonet import prototype_logits
from fewshot.models import MLP, Conv4


def test_logits_are_negative_squared_distances_to_class_means():
    torch.manual_seed(0)
    method = ProtoNet(torch.nn.Identity())
    support = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    query = torch.randn(5, 4)
    logits = method.adapt(support, labels, 3)(query)
    means = torch.stack([support[labels == c].mean(0) for c in range(3)])
    expected = -torch.cdist(query, means).pow(2)
    assert torch.allclose(logits, expected, atol=1e-5)


def test_cosine_distance_uses_a_learned_scale():
    method = ProtoNet(torch.nn.Identity(), distance="cosine")
    assert method.scale.requires_grad and method.scale.item() == 10.0
    q, p = torch.randn(3, 4), torch.randn(2, 4)
    expected = 10.0 * F.normalize(q, dim=1) @ F.normalize(p, dim=1).T
    assert torch.allclose(prototype_logits(q, p, "cosine", method.scale), expected)


def test_support_order_and_label_permutation():
    torch.manual_seed(1)
    method = ProtoNet(MLP(8, (16,))).eval()
    support, labels, query = torch.randn(9, 8, 1, 1), torch.arange(3).repeat_interleave(3), torch.randn(4, 8, 1, 1)
    base = method.adapt(support, labels, 3)(query)
    order = torch.randperm(9)
    assert torch.allclose(method.adapt(support[order], labels[order], 3)(query), base, atol=1e-5)
    perm = torch.tensor([2, 0, 1])  # class c becomes perm[c]
    permuted = method.adapt(support, perm[labels], 3)(query)
    assert torch.allclose(permuted[:, perm], base, atol=1e-5)


def test_learns_a_separable_task_in_a_few_steps():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 10, generator=g) * 3
    y = torch.arange(6).repeat_interleave(30)
    x = centers[y] + torch.randn(len(y), 10, generator=g)
    data = from_arrays(x, y, splits={"train": [0, 1, 2], "test": [3, 4, 5]})
    torch.manual_seed(0)
    method = build_method("protonet", MLP(10, (32,)))
    opt = torch.optim.Adam(method.parameters(), 1e-2)
    sampler = EpisodeSampler(data, "train", 3, 2, 5)
    for step in range(30):
        loss, metrics = method.loss(sampler.batch(step, 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["accuracy"] > 95
    test = EpisodeSampler(data, "test", 3, 1, 10).episode(0)
    logits = method.eval().adapt(test.support_x, test.support_y, 3)(test.query_x)
    assert (logits.argmax(1) == test.query_y).float().mean() > 0.95


def test_conv4_feature_sizes():
    assert Conv4(1)(torch.zeros(2, 1, 28, 28)).shape == (2, 64)
    assert Conv4(3)(torch.zeros(2, 3, 84, 84)).shape == (2, 1600)
