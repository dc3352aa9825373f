"""DN4 (image-to-class measure over local descriptors, arXiv:1903.12290): the measure
against a literal loop over the paper's eq. 2, a case where local descriptors decide
what the image-level average gets wrong, and the method through the contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fewshot.data.episodes import Episode
from fewshot.errors import ConfigError, DataError
from fewshot.methods import METHODS, build_method
from fewshot.methods.dn4 import DN4, image_to_class
from fewshot.models.backbones import MLP, Conv4


def paper_measure(query: np.ndarray, support: np.ndarray, support_y: np.ndarray, way: int, k: int) -> np.ndarray:
    """Eq. 2 as written: for each query descriptor, the cosines to every descriptor of the
    class, sorted, the k largest summed; then summed over the query's descriptors."""
    out = np.zeros((len(query), way))
    for qi, q in enumerate(query):
        for c in range(way):
            pool = [d for image, label in zip(support, support_y) if label == c for d in image]
            for x in q:
                cosines = sorted((float(x @ d / (np.linalg.norm(x) * np.linalg.norm(d))) for d in pool), reverse=True)
                out[qi, c] += sum(cosines[:k])
    return out


def test_registered():
    assert METHODS["dn4"] is DN4


@pytest.mark.parametrize("k", [1, 3, 50])  # 50: more than a class's pool holds, so all of it
def test_image_to_class_is_the_papers_eq_2(k):
    g = torch.Generator().manual_seed(0)
    query = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    support = torch.randn(6, 5, 3, generator=g, dtype=torch.float64)
    support_y = torch.tensor([0, 1, 2, 0, 1, 0])  # unequal shots: pools of 15, 10 and 5 descriptors
    ours = image_to_class(query, support, support_y, 3, k)
    expected = paper_measure(query.numpy(), support.numpy(), support_y.numpy(), 3, k)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_local_descriptors_decide_where_the_image_average_does_not():
    """Query descriptors e1, e2. Class A: one image [e1, e2], one [-u, -u] (u = (e1+e2)/√2);
    class B: two images [u, u]. The image-level mean of A points away from the query's
    mean and B's straight at it, so a prototype picks B; DN4 with k=1 finds e1 and e2
    exactly in A's pool (Φ = 2) and only u in B's (Φ = √2), so it picks A."""
    e1, e2 = torch.eye(3, dtype=torch.float64)[:2]
    u = (e1 + e2) / math.sqrt(2)
    query = torch.stack([e1, e2])[None]
    support = torch.stack([torch.stack([e1, e2]), torch.stack([-u, -u]), torch.stack([u, u]), torch.stack([u, u])])
    support_y = torch.tensor([0, 0, 1, 1])
    means = torch.stack([support[support_y == c].mean((0, 1)) for c in (0, 1)])
    image_level = torch.nn.functional.cosine_similarity(query.mean(1), means)
    assert image_level.argmax() == 1
    phi = image_to_class(query, support, support_y, 2, 1)[0]
    torch.testing.assert_close(phi, torch.tensor([2.0, math.sqrt(2)], dtype=torch.float64))


def clusters(way=3, shot=2, query=4, seed=0):
    """Images of 28×28 whose class is a faintly brighter quadrant under strong noise
    (an untrained Conv-4 gets about half of them right)."""
    g = torch.Generator().manual_seed(seed)

    def images(count):
        x = torch.randn(way * count, 1, 28, 28, generator=g)
        for i, c in enumerate(torch.arange(way).repeat_interleave(count)):
            r, col = divmod(int(c), 2)
            x[i, 0, 14 * r:14 * r + 14, 14 * col:14 * col + 14] += 0.6
        return x

    return Episode(images(shot), torch.arange(way).repeat_interleave(shot), images(query),
                   torch.arange(way).repeat_interleave(query), way, shot)


def test_conv4_gives_the_papers_descriptor_grid_and_gradients_reach_the_backbone():
    method = build_method("dn4", Conv4(1, 8), image_shape=(1, 28, 28))
    episode = clusters()
    assert method.descriptors(episode.support_x).shape == (6, 7 * 7, 8)  # 28 -> 14 -> 7, then unpooled
    assert method.features(episode.support_x).shape == (6, 49 * 8)
    loss, metrics = method.loss([episode])
    loss.backward()
    grads = [p.grad for p in method.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert method.backbone[0][0].weight.grad.abs().sum() > 0


def test_training_learns_quadrant_images_it_could_not_tell_apart_untrained():
    torch.manual_seed(0)
    method = build_method("dn4", Conv4(1, 8), image_shape=(1, 28, 28))
    held_out = [clusters(seed=100 + i) for i in range(5)]

    @torch.no_grad()
    def accuracy():
        method.eval()
        hits = torch.cat([method.episode_logits(t).argmax(1) == t.query_y for t in held_out])
        method.train()
        return float(hits.double().mean())

    assert accuracy() < 0.8
    optimiser = torch.optim.Adam(method.parameters(), lr=1e-2)
    for step in range(30):
        loss, _ = method.loss([clusters(seed=step)])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert accuracy() == 1.0
    method.eval()
    test = held_out[0]
    with torch.no_grad():  # adapt's predictor is the training path's measure
        torch.testing.assert_close(method.adapt(test.support_x, test.support_y, test.way)(test.query_x),
                                   method.episode_logits(test))


def test_descriptors_run_on_the_meta_device_and_the_measure_keeps_the_inputs_dtype():
    """The backbone part creates nothing off its inputs' device. The measure gathers each
    class's pool by a boolean mask, a data-dependent shape the meta device cannot give, so
    it is checked in float64 for dtype instead (as MetaOptNet's SVM step)."""
    episode = clusters()
    method = build_method("dn4", Conv4(1, 8), image_shape=(1, 28, 28)).to("meta")
    desc = method.descriptors(episode.support_x.to("meta"))
    assert desc.device.type == "meta" and desc.shape == (6, 49, 8)
    method = build_method("dn4", Conv4(1, 8), image_shape=(1, 28, 28)).double().eval()
    logits = method.adapt(episode.support_x.double(), episode.support_y, 3)(episode.query_x.double())
    assert logits.dtype == torch.float64 and logits.shape == (12, 3)


@pytest.mark.parametrize("options, message", [
    ({"neighbors": 0}, "dn4 'neighbors' must be an integer in [1, 10000]"),
    ({"unpooled_blocks": 5}, "dn4 unpooled_blocks=5 but the backbone has 4 pooling blocks"),
    ({"k": 3}, "method 'dn4' has no option 'k'"),
])
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError) as info:
        build_method("dn4", Conv4(1, 8), **options)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_needs_feature_maps_and_every_class_in_the_support():
    with pytest.raises(ConfigError, match="dn4 needs a backbone ending in Flatten"):
        build_method("dn4", MLP(16))
    method = build_method("dn4", Conv4(1, 8))
    episode = clusters()
    with pytest.raises(DataError, match="dn4: class 3 of 4 has no support image"):
        method.adapt(episode.support_x, episode.support_y, 4)(episode.query_x)
