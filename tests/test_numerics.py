"""Numerics under reduced precision: distances are computed in float32 under autocast (issue 34, case 7)."""

import torch
from torch import nn

from fewshot.data.episodes import Episode
from fewshot.methods import ProtoNet
from fewshot.methods.protonet import prototype_logits


def close_large_norm_features(seed: int = 0):
    """Features of norm ~200 that differ by ~0.5: ||q||² ≈ 4·10⁴, where bf16's spacing is 256,
    while the distances are about 1 — the bf16 expansion ||q||² - 2 q·p + ||p||² is noise."""
    g = torch.Generator().manual_seed(seed)
    centre = 200.0 * torch.nn.functional.normalize(torch.randn(1, 32, generator=g), dim=1)
    support = centre + 0.2 * torch.randn(15, 32, generator=g)
    labels = torch.arange(5).repeat_interleave(3)
    query = centre + 0.2 * torch.randn(10, 32, generator=g)
    return support, labels, query


def test_the_case_is_one_where_a_bf16_expansion_is_visibly_wrong():
    # Guard that the next tests can fail: the naive bf16 expansion is far from float32 here.
    support, labels, query = close_large_norm_features()
    prototypes = torch.stack([support[labels == c].mean(0) for c in range(5)])
    exact = -torch.cdist(query.double(), prototypes.double()).pow(2)
    q, p = query.bfloat16(), prototypes.bfloat16()
    naive = -(q.pow(2).sum(1, keepdim=True) - 2 * q @ p.T + p.pow(2).sum(1)[None]).double()
    assert (naive - exact).abs().max() > 10 * exact.abs().max()


def test_prototype_logits_under_bf16_autocast_equal_float32():
    support, labels, query = close_large_norm_features()
    prototypes = torch.stack([support[labels == c].mean(0) for c in range(5)])
    expected = prototype_logits(query, prototypes, "euclidean")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = prototype_logits(query, prototypes, "euclidean")
        cosine = prototype_logits(query, prototypes, "cosine", torch.tensor(10.0))
    assert got.dtype == torch.float32 and cosine.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=0, atol=1e-3)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert torch.allclose(cosine, prototype_logits(query, prototypes, "cosine", torch.tensor(10.0)), atol=1e-5)


def test_bf16_inputs_are_compared_in_float32():
    # Features that are already bf16 (a backbone's output under autocast) are not expanded in bf16.
    support, labels, query = close_large_norm_features(1)
    q, p = query.bfloat16(), support[:5].bfloat16()
    got = prototype_logits(q, p, "euclidean")
    assert got.dtype == torch.float32
    # float32's own expansion is exact to a few 1e-3 at ||q||² ≈ 4·10⁴; bf16's was off by tens.
    assert torch.allclose(got, -torch.cdist(q.double(), p.double()).pow(2).float(), atol=5e-2)


def test_protonet_logits_under_bf16_autocast_equal_float32_in_training_and_at_test_time():
    support, labels, query = close_large_norm_features(2)
    method = ProtoNet(nn.Identity())
    episode = Episode(support, labels, query, torch.zeros(len(query), dtype=torch.long), 5, 3)
    train32 = method.episode_logits(episode)
    test32 = method.adapt(support, labels, 5)(query)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        train16 = method.episode_logits(episode)
        test16 = method.adapt(support, labels, 5)(query)
    for got, expected in ((train16, train32), (test16, test32)):
        assert got.dtype == torch.float32
        assert torch.allclose(got, expected, rtol=0, atol=1e-3)


def test_protonet_with_a_bf16_backbone_output_keeps_float32_class_means():
    # A Linear under autocast returns bf16 features; the prototypes and distances are still float32.
    torch.manual_seed(0)
    support, labels, query = close_large_norm_features(3)
    backbone = nn.Linear(32, 32)
    method = ProtoNet(backbone)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = method.adapt(support, labels, 5)(query)
        features_q, features_s = backbone(query), backbone(support)
    assert features_q.dtype == torch.bfloat16 and logits.dtype == torch.float32
    prototypes = torch.stack([features_s.float()[labels == c].mean(0) for c in range(5)])
    expected = -torch.cdist(features_q.float().double(), prototypes.double()).pow(2)
    assert torch.allclose(logits.double(), expected, rtol=0, atol=1e-2)


# -- flags are compared with None, never by truthiness (issue 34, case 8) ----------------------


def _config(argv):
    from fewshot.cli.flags import config_from_args
    from fewshot.cli.main import build_parser

    args, _ = build_parser().parse_known_args(["train", *argv, "--out", "unused"])
    return config_from_args(args)


def test_inner_steps_zero_and_inner_lr_zero_reach_the_method_options():
    assert _config(["maml-rl", "--dataset", "bandit-5", "--inner-steps", "0"]).method_options["inner_steps"] == 0
    assert _config(["maml", "--inner-lr", "0"]).method_options["inner_lr"] == 0.0
    options = _config(["maml", "--inner-steps", "3", "--inner-lr", "0.5"]).method_options
    assert options["inner_steps"] == 3 and options["inner_lr"] == 0.5
    assert "first_order" not in options  # the switch, absent, adds nothing
    assert _config(["maml", "--first-order"]).method_options["first_order"] is True


def test_maml_rl_inner_steps_zero_builds_the_pretrained_baseline():
    from fewshot.methods import build_method
    from fewshot.models import MLP

    config = _config(["maml-rl", "--dataset", "bandit-5", "--inner-steps", "0"])
    method = build_method("maml-rl", MLP(5, (8,)), task="reinforcement", policy="categorical", **config.method_options)
    assert method.inner_steps == 0


def test_mamlpp_refuses_inner_steps_zero_from_the_command_line(tmp_path):
    from fewshot.cli.main import main

    out = tmp_path / "run"
    code = main(["train", "mamlpp", "--dataset", "digits", "--inner-steps", "0", "--episodes", "1",
                 "--out", str(out)])
    assert code == 2 and not (out / "state.json").exists()


def test_rollouts_fill_shot_and_query_only_when_they_are_not_given():
    config = _config(["maml-rl", "--dataset", "bandit-5", "--rollouts", "7"])
    assert (config.shot, config.query) == (7, 7)
    config = _config(["maml-rl", "--dataset", "bandit-5", "--rollouts", "7", "--shot", "3"])
    assert (config.shot, config.query) == (3, 7)
