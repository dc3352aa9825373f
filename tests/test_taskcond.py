"""The task-conditioned network: an order-free task encoder and FiLM conditioning."""

import copy

import pytest
import torch

from fewshot.errors import ConfigError
from fewshot.methods import TaskCondNet
from fewshot.models import MLP, Conv4



def conv_method(**options) -> TaskCondNet:
    torch.manual_seed(0)
    return TaskCondNet(Conv4(1, width=8, depth=2), image_shape=(1, 8, 8), **options)


def support_set(shot: int = 3):
    g = torch.Generator().manual_seed(0)
    return torch.rand(3 * shot, 1, 8, 8, generator=g), torch.arange(3).repeat_interleave(shot)


def test_task_encoder_ignores_support_order_and_labels_but_sees_the_task():
    method = conv_method().eval()
    x, y = support_set()
    with torch.no_grad():
        z = method.task_embedding(x, y, 3)
        order = torch.randperm(len(x))
        assert torch.allclose(method.task_embedding(x[order], y[order], 3), z, atol=1e-5)
        relabelled = torch.tensor([1, 2, 0])[y]
        assert torch.allclose(method.task_embedding(x, relabelled, 3), z, atol=1e-5)
        assert not torch.allclose(method.task_embedding(x.flip(-1), y, 3), z, atol=1e-4)  # another task
        # The spread of a class is part of the summary: splitting the classes differently changes z.
        assert not torch.allclose(method.task_embedding(x, torch.arange(3).repeat(3), 3), z, atol=1e-4)
    assert z.shape == (64,)


def test_film_starts_as_identity_and_conditions_every_batchnorm():
    method = conv_method().eval()
    x, y = support_set()
    with torch.no_grad():
        film = method.film_parameters(method.task_embedding(x, y, 3))
        assert [g.shape[0] for g, _ in film] == [8, 8]  # one (γ, β) per BatchNorm layer
        plain = method.backbone(x)
        assert torch.allclose(method.conditioned_features(x, film), plain)
        method.film_heads[1].bias[8:] = 0.5  # shift β of the last layer
        film = method.film_parameters(method.task_embedding(x, y, 3))
        assert not torch.allclose(method.conditioned_features(x, film), plain)
        assert torch.equal(method.backbone(x), plain)  # outside a conditioned pass nothing changes


def test_feature_conditioning_and_copies():
    torch.manual_seed(0)
    method = TaskCondNet(MLP(10, (16,)), image_shape=(10, 1, 1), condition="features").eval()
    assert len(method.film_heads) == 1 and method.film_heads[0].out_features == 32
    conv = conv_method().eval()
    clone = copy.deepcopy(conv)  # the FiLM hooks of a copy condition the copy
    x, y = support_set()
    with torch.no_grad():
        clone.film_heads[0].bias[8:] = 1.0
        film = clone.film_parameters(clone.task_embedding(x, y, 3))
        assert not torch.allclose(clone.conditioned_features(x, film), conv.backbone(x))
        assert torch.allclose(conv.conditioned_features(x, conv.film_parameters(conv.task_embedding(x, y, 3))), conv.backbone(x))
    options = {k: v for k, v in conv.get_params().items() if k != "image_shape"}  # image_shape: from the data
    assert options == {"condition": "backbone", "distance": "euclidean", "hidden": 64}


def test_bad_settings():
    with pytest.raises(ConfigError, match="image_shape"):
        TaskCondNet(Conv4(1, width=8, depth=2))
    with pytest.raises(ConfigError, match="BatchNorm or Linear"):
        TaskCondNet(torch.nn.Flatten(), image_shape=(10, 1, 1))
    with pytest.raises(ConfigError, match="'distance' must be one of euclidean, cosine, got 'manhattan'"):
        conv_method(distance="manhattan")
