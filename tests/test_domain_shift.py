"""Methods for domain shift: feature-wise transformation layers and test-time BatchNorm."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fewshot import train as trainer_module
from fewshot.data import EpisodeSampler, load_dataset
from fewshot.errors import ConfigError
from fewshot.evaluate import evaluate
from fewshot.methods import build_method
from fewshot.methods.testtime_bn import SupportBatchNorm
from fewshot.methods.transfer import adapt_method
from fewshot.models import Conv4, build_backbone
from fewshot.models.feature_transform import FeatureWiseTransform, noise_scales, transforms_off


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=16)


def _ft_backbone():
    torch.manual_seed(0)
    return build_backbone("conv4-ft", (1, 16, 16), width=8, depth=3)


def test_ft_layers_follow_each_batchnorm_and_add_no_trainable_parameter():
    ft = _ft_backbone()
    layers = [m for m in ft.modules() if isinstance(m, FeatureWiseTransform)]
    assert len(layers) == 3 and ft.ft_layers == 3
    for block in list(ft)[:3]:
        assert isinstance(block[1], nn.BatchNorm2d) and isinstance(block[2], FeatureWiseTransform)
    plain = Conv4(1, width=8, depth=3)
    assert sum(p.numel() for p in ft.parameters()) == sum(p.numel() for p in plain.parameters())
    # The authors' noise (their softplus has beta=100): deviations 0.3 and 0.5 from the thetas 0.3 and 0.5;
    # softplus_beta=1 is fewshot's former scale.
    assert noise_scales() == pytest.approx((0.3, 0.5), abs=1e-6)
    assert noise_scales(softplus_beta=1.0) == pytest.approx((0.8544, 0.9741), abs=1e-4)
    former = build_backbone("conv4-ft", (1, 16, 16), width=8, depth=3, softplus_beta=1.0).train()
    torch.manual_seed(0)
    z = torch.zeros(1, 8, 4, 4)
    draws = torch.stack([layers[0](z)[0, :, 0, 0] for _ in range(2000)])  # beta's noise alone: x is 0
    assert float(draws.std()) == pytest.approx(0.5, rel=0.05)
    torch.manual_seed(0)
    draws = torch.stack([next(m for m in former.modules() if isinstance(m, FeatureWiseTransform))(z)[0, :, 0, 0]
                         for _ in range(2000)])
    assert float(draws.std()) == pytest.approx(0.974, rel=0.05)


def test_ft_layers_act_in_meta_training_and_gradients_flow_through_their_noise():
    ft = _ft_backbone()
    x = torch.rand(10, 1, 16, 16)
    ft.train()
    torch.manual_seed(1)
    a = ft(x)
    torch.manual_seed(2)
    b = ft(x)
    assert not torch.allclose(a, b)  # fresh transformations on every pass
    with transforms_off(ft):
        torch.manual_seed(1)
        off = ft(x)
    assert not torch.allclose(a, off)
    # The sampled transformation sits in the graph: the backbone's gradients differ with it.
    def grads(on: bool):
        ft.zero_grad()
        torch.manual_seed(3)
        if on:
            ft(x).square().sum().backward()
        else:
            with transforms_off(ft):
                ft(x).square().sum().backward()
        return ft[0][0].weight.grad.clone()
    assert not torch.allclose(grads(True), grads(False))


def test_ft_layers_are_the_identity_at_test_time_whatever_the_mode(digits):
    ft = _ft_backbone()
    plain = Conv4(1, width=8, depth=3)
    plain.load_state_dict({k: v for k, v in ft.state_dict().items() if "theta" not in k}, strict=False)
    x = torch.rand(6, 1, 16, 16)
    ft.eval(), plain.eval()
    assert torch.equal(ft(x), plain(x))
    # A method kept in train mode at test time (the MAML family) gets no noise either:
    # evaluate() turns the layers off for the whole evaluation, and back on after.
    torch.manual_seed(0)
    maml = build_method("maml", build_backbone("conv4-ft", (1, 16, 16), width=8, depth=3), way=5, inner_steps=1,
                        image_shape=(1, 16, 16))
    sampler = EpisodeSampler(digits, "test", 5, 1, 3, seed=0)
    torch.manual_seed(5)
    first = evaluate(maml, sampler, 4, progress=False)
    torch.manual_seed(6)
    second = evaluate(maml, sampler, 4, progress=False)
    assert np.array_equal(first.scores, second.scores)
    assert all(m.enabled for m in maml.modules() if isinstance(m, FeatureWiseTransform))


def test_ft_layers_transform_only_in_meta_training_steps_never_in_validation(tmp_path):
    """Through the one trainer: every training step's forward passes go through active FT
    layers (the transformation is in the graph the optimiser differentiates); every
    validation pass (evaluate) meets them as the identity."""
    from fewshot.config import TrainConfig
    from fewshot.train import Trainer

    config = TrainConfig(dataset="digits", dataset_options={"image_size": 16}, method="protonet", backbone="conv4-ft",
                         backbone_options={"width": 8, "depth": 3}, episodes=4, val_every=2, val_episodes=3, way=3,
                         query=2, val_split="test")
    trainer = Trainer(config, tmp_path / "ft")
    layers = [m for m in trainer.method.modules() if isinstance(m, FeatureWiseTransform)]
    assert len(layers) == 3
    seen = {"train": [], "val": []}
    validating = [False]
    real_evaluate = trainer_module.evaluate

    def watched(*args, **kwargs):  # the trainer's validation
        validating[0] = True
        try:
            return real_evaluate(*args, **kwargs)
        finally:
            validating[0] = False

    def hook(module, inputs, output):
        seen["val" if validating[0] else "train"].append((module.active(), output.requires_grad))

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(trainer_module, "evaluate", watched)
            assert trainer.run(progress=False, record=False).steps == 4
    finally:
        for h in handles:
            h.remove()
    assert seen["train"] and all(active and grad for active, grad in seen["train"])
    assert seen["val"] and not any(active for active, _ in seen["val"])


def test_an_ft_backbone_adapts_at_test_time_exactly_as_its_plain_twin(digits):
    """Fine-tuning and MAML take gradients at test time, in train mode: the FT layers must give
    them nothing, so a conv4-ft model scores exactly as Conv-4 with the same weights."""
    torch.manual_seed(0)
    ft = build_backbone("conv4-ft", (1, 16, 16), width=8, depth=3)
    plain = build_backbone("conv4", (1, 16, 16), width=8, depth=3)
    plain.load_state_dict({k: v for k, v in ft.state_dict().items() if "theta" not in k})
    sampler = EpisodeSampler(digits, "test", 5, 1, 3, seed=0)
    for make in (lambda b: build_method("maml", b, way=5, inner_steps=2, image_shape=(1, 16, 16)),
                 lambda b: adapt_method(build_method("protonet", b), "finetune", steps=3)):
        scores = []
        for backbone in (ft, plain):
            torch.manual_seed(7)
            scores.append(evaluate(make(copy.deepcopy(backbone)), sampler, 3, progress=False).scores)
        assert np.array_equal(*scores)


def _protonet(digits):
    torch.manual_seed(0)
    method = build_method("protonet", Conv4(1, width=8, depth=3))
    method.train()
    with torch.no_grad():  # running statistics of the training domain
        method.features(digits.images[:200].float() / 255)
    return method.eval()


def test_support_bn_takes_its_statistics_from_the_support_images_alone(digits):
    method = _protonet(digits)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    adapted = SupportBatchNorm(method)
    ep = EpisodeSampler(digits, "test", 5, 2, 4, seed=1).episode(0)
    predictor = adapted.adapt(ep.support_x, ep.support_y, 5)
    first = adapted.norms[0]
    conv = adapted.inner.backbone[0][0]
    with torch.no_grad():
        z = conv(ep.support_x)
    assert torch.allclose(first.running_mean, z.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(first.running_var, z.var(dim=(0, 2, 3), unbiased=True), atol=1e-4)
    # Inductive: a query's logits do not depend on the other queries.
    all_logits = predictor(ep.query_x)
    assert torch.allclose(predictor(ep.query_x[:3]), all_logits[:3], atol=1e-5)
    # The wrapped method is untouched.
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in before.items())


def test_transductive_bn_uses_query_images_never_labels_and_is_marked(digits):
    method = _protonet(digits)
    adapted = adapt_method(method, "transductive-bn")
    sampler = EpisodeSampler(digits, "test", 5, 1, 4, seed=2)
    ep = sampler.episode(0)
    logits = adapted.adapt(ep.support_x, ep.support_y, 5)(ep.query_x)
    z = adapted.inner.backbone[0][0](torch.cat([ep.support_x, ep.query_x])).detach()
    assert torch.allclose(adapted.norms[0].running_mean, z.mean(dim=(0, 2, 3)), atol=1e-5)
    # The queries' labels never reach it: any labelling of the queries gives the same logits.
    ep.query_y = ep.query_y[torch.randperm(len(ep.query_y))]
    assert torch.equal(adapted.adapt(ep.support_x, ep.support_y, 5)(ep.query_x), logits)
    # A query's prediction depends on the other queries: transductive, and marked so.
    assert not torch.allclose(adapted.adapt(ep.support_x, ep.support_y, 5)(ep.query_x[:3]), logits[:3])
    result = evaluate(adapted, sampler, 3, progress=False)
    assert result.transductive and "transductive" in result.summary()
    assert not evaluate(adapt_method(method, "support-bn"), sampler, 3, progress=False).transductive


def test_test_time_bn_refuses_what_it_cannot_adapt(digits):
    maml = build_method("maml", Conv4(1, width=8, depth=3), way=5, image_shape=(1, 16, 16))
    with pytest.raises(ConfigError, match="already normalises"):
        adapt_method(maml, "support-bn")
    with pytest.raises(ConfigError, match="support-bn"):
        adapt_method(_protonet(digits), "suport-bn")
