"""The stronger one-shot recognizer's options: episodes within one group (Omniglot's
alphabets), training-time augmentation, ProtoNet's test-time views, larger inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fewshot.config import TrainConfig
from fewshot.data import ClassDataset, EpisodeSampler, from_arrays, make_sampler
from fewshot.data.augment import augment_batch, augment_images, max_shift, shift, shifted_views, view_shifts
from fewshot.data.omniglot import load_omniglot
from fewshot.errors import ConfigError, DataError
from fewshot.methods import ProtoNet, build_method
from fewshot.methods.protonet import prototype_logits
from fewshot.models import MLP, Conv4
from fewshot.models.backbones import ResNet12, feature_dim
from fewshot.train import Trainer


def grouped(groups: dict[str, int], per_class: int = 6, size: int = 1, with_groups: bool = True) -> ClassDataset:
    """Classes in named groups; each image's first pixel is its class id / 255, so it can be traced."""
    names, group_of = [], []
    for group, count in groups.items():
        for c in range(count):
            names.append(f"{group}/c{c}")
            group_of.append(group)
    labels = np.repeat(np.arange(len(names)), per_class)
    images = torch.zeros(len(labels), 1, size, size, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.from_numpy(labels.astype(np.uint8))
    return ClassDataset("grouped", images, torch.from_numpy(labels), names, {"test": list(range(len(names)))},
                        class_groups=group_of if with_groups else None)


# -- episodes within one group ---------------------------------------------------------------

def test_within_group_episodes_hold_classes_of_one_group_and_are_seeded():
    data = grouped({"A": 6, "B": 5, "C": 2, "D": 7})  # C is too small for 4-way episodes
    sampler = EpisodeSampler(data, "test", 4, 1, 2, seed=3, within_groups=True)
    seen = set()
    for i in range(60):
        episode = sampler.episode(i)
        groups = {data.class_groups[c] for c in episode.classes}
        assert len(groups) == 1 and len(episode.classes) == 4
        seen |= groups
        # The classes are really those of the images (traced by their first pixel).
        ids = torch.round(episode.query_x[:, 0, 0, 0] * 255).long()
        assert set(ids.tolist()) == set(episode.classes)
    assert seen == {"A", "B", "D"}  # every large-enough group is drawn, never the small one
    again = EpisodeSampler(data, "test", 4, 1, 2, seed=3, within_groups=True)
    assert all(torch.equal(sampler.episode(i).support_x, again.episode(i).support_x) for i in (0, 7, 59))
    assert [sampler.episode(i).classes for i in range(5)] != \
        [EpisodeSampler(data, "test", 4, 1, 2, seed=4, within_groups=True).episode(i).classes for i in range(5)]
    assert sampler.on("cpu") is sampler and "within groups" in repr(sampler)


def test_default_episodes_are_unchanged_by_groups():
    """Without within_groups, episode i is exactly what it always was: the same generator
    calls, whether or not the dataset names groups."""
    with_groups, without = grouped({"A": 6, "B": 5, "D": 7}), grouped({"A": 6, "B": 5, "D": 7}, with_groups=False)
    a, b = EpisodeSampler(with_groups, "test", 5, 1, 3, seed=11), EpisodeSampler(without, "test", 5, 1, 3, seed=11)
    for i in range(10):
        rng = np.random.default_rng((11, i))
        expected = tuple(rng.choice(18, 5, replace=False).tolist())  # the sampler's first draw, as before
        assert a.episode(i).classes == b.episode(i).classes == expected
        assert torch.equal(a.episode(i).query_x, b.episode(i).query_x)


def test_within_groups_errors_say_what_to_do():
    with pytest.raises(DataError, match="largest group .* 'D', has 7; use --way 7 or fewer"):
        EpisodeSampler(grouped({"A": 6, "B": 5, "D": 7}), "test", 8, 1, 2, within_groups=True)
    with pytest.raises(DataError, match="names no class groups"):
        EpisodeSampler(grouped({"A": 6}, with_groups=False), "test", 3, 1, 2, within_groups=True)
    with pytest.raises(ConfigError, match="no class groups"):
        make_sampler("sinusoid", None, "test", 5, 5, 5, within_groups=True)
    with pytest.raises(DataError, match="one group per class"):
        ClassDataset("bad", torch.zeros(2, 1, 1, 1), torch.tensor([0, 1]), ["a", "b"], class_groups=["g"])


def test_omniglot_groups_are_alphabets_and_held_out_splits(tmp_root, fake_omniglot):
    fake_omniglot(tmp_root / "omniglot", drawers=3)
    data = load_omniglot(tmp_root, image_size=8, split_scheme="background", val_alphabets=1, held_out_rotations=False)
    assert all(data.class_groups[i] == name.split("/")[0] for i, name in enumerate(data.class_names))
    alphabets = lambda split: {data.class_groups[c] for c in data.split_classes(split)}  # noqa: E731
    # Background Alpha (3 characters) and Beta (2): Beta held out as val; Gamma is the test set.
    assert alphabets("train") == {"Alpha"} and alphabets("val") == {"Beta"} and alphabets("test") == {"Gamma"}
    assert len(data.split_classes("train")) == 3 * 4  # training keeps the rotations as classes
    assert [data.class_names[c] for c in data.split_classes("test")] == \
        ["Gamma/character01/rot000", "Gamma/character02/rot000"]  # upright characters only
    assert data.info["val_alphabets"] == ["Beta"]
    episode = EpisodeSampler(data, "test", 2, 1, 1, within_groups=True).episode(0)
    assert {data.class_groups[c] for c in episode.classes} == {"Gamma"}
    with pytest.raises(ConfigError, match="own val split"):
        load_omniglot(tmp_root, image_size=8, val_alphabets=1)
    with pytest.raises(ConfigError, match="between 1 and 1"):
        load_omniglot(tmp_root, image_size=8, split_scheme="background", val_alphabets=2)
    default = load_omniglot(tmp_root, image_size=8, split_scheme="background")
    assert set(default.splits) == {"train", "test"} and len(default.split_classes("test")) == 2 * 4


# -- training-time augmentation --------------------------------------------------------------

def test_shift_augmentation_moves_whole_pixels_and_is_reproducible():
    sampler = EpisodeSampler(from_arrays(torch.rand(40, 1, 14, 14), np.repeat(np.arange(4), 10)), None, 4, 1, 2)
    batch = sampler.batch(0, 2)
    a, b = augment_batch(batch, "shift", 0, 5), augment_batch(batch, "shift", 0, 5)
    assert all(torch.equal(x.query_x, y.query_x) and torch.equal(x.support_x, y.support_x) for x, y in zip(a, b))
    assert not torch.equal(a[0].query_x, augment_batch(batch, "shift", 0, 6)[0].query_x)
    assert not torch.equal(a[0].query_x, augment_batch(batch, "shift", 1, 5)[0].query_x)
    assert torch.equal(a[0].query_y, batch[0].query_y) and a[0].classes == batch[0].classes
    limit = max_shift(14)
    moved = 0
    for original, changed in zip(torch.cat([e.query_x for e in batch]), torch.cat([e.query_x for e in a])):
        matches = [(dy, dx) for dy in range(-limit, limit + 1) for dx in range(-limit, limit + 1)
                   if torch.allclose(shift(original, dy, dx), changed)]
        assert matches, "every image is its original moved by whole pixels within the limit"
        moved += (0, 0) not in matches
    assert moved > 0
    assert augment_batch(batch, "none", 0, 5)[0] is batch[0]


def test_affine_augmentation_changes_images_within_their_range():
    x = torch.rand(16, 1, 28, 28)
    out = augment_images(x, "affine", np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == x.dtype and not torch.equal(out, x)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, augment_images(x, "affine", np.random.default_rng(0)))


def test_trainer_augments_training_episodes_only(tmp_path):
    data = from_arrays(torch.rand(60, 1, 12, 12), np.repeat(np.arange(6), 10),
                       splits={"train": [0, 1, 2, 3], "val": [4, 5]})
    config = TrainConfig(method="protonet", backbone="mlp", backbone_options={"hidden": [16]}, dataset="digits",
                         way=2, shot=1, query=2, episodes=2, val_every=2, val_episodes=2, augment="shift")
    seen: dict[str, list] = {"train": [], "val": []}

    def watch(trainer):
        loss, adapt = trainer.method.loss, trainer.method.adapt
        trainer.method.loss = lambda eps: (seen["train"].append(eps[0].query_x.clone()), loss(eps))[1]
        trainer.method.adapt = lambda x, y, way: (seen["val"].append(x.clone()), adapt(x, y, way))[1]
        return trainer

    trainer = watch(Trainer(config, tmp_path / "a", dataset=data))
    trainer.run(progress=False, record=False)
    train_images = [trainer.sampler.episode(step).query_x for step in range(2)]
    seen["train"] = seen["train"][-2:]  # the two steps (a dry run of the step's memory may come first)
    assert all(not torch.equal(seen["train"][s], train_images[s]) for s in range(2))
    val_images = [trainer.val_sampler.episode(i).support_x for i in range(2)]
    assert all(torch.equal(seen["val"][i], val_images[i]) for i in range(2))  # validation is never augmented
    first = seen["train"][:2]
    seen["train"].clear()
    watch(Trainer(config, tmp_path / "b", dataset=data)).run(progress=False, record=False)
    assert all(torch.equal(x, y) for x, y in zip(first, seen["train"][-2:]))  # the same run, the same changes


def test_augment_is_a_declared_setting():
    config = TrainConfig(augment="affine")
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TrainConfig().augment == "none"
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"augment": "flip"})
    assert "augment" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="at least 8x8"):
        Trainer(TrainConfig(method="maml", backbone="mlp", dataset="sinusoid", shot=5, query=5, augment="shift"),
                "unused")


def test_recipe_files_are_valid_configs():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    for name in ("protonet-omniglot-strong-20w1s.json", "protonet-omniglot-background-20w1s.json"):
        config = TrainConfig.layered(root / name)
        assert config.augment == "shift" and config.dataset == "omniglot" and config.way == 20
    background = TrainConfig.layered(root / "protonet-omniglot-background-20w1s.json")
    assert background.dataset_options["held_out_rotations"] is False and background.dataset_options["val_alphabets"] > 0


# -- test-time views -------------------------------------------------------------------------

def test_views_are_fixed_shifts_starting_with_the_image():
    assert view_shifts(1, 28) == [(0, 0)]
    assert view_shifts(5, 28) == [(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)]
    assert view_shifts(3, 56) == [(0, 0), (0, 2), (0, -2)]
    x = torch.rand(3, 1, 10, 10)
    views = shifted_views(x, 3)
    assert views.shape == (9, 1, 10, 10) and torch.equal(views[:3], x) and torch.equal(views[3:6], shift(x, 0, 1))
    with pytest.raises(ValueError):
        view_shifts(10, 28)


def test_protonet_test_views_average_shifted_embeddings():
    torch.manual_seed(0)
    model = ProtoNet(Conv4(1, 8)).eval()
    support, support_y, query = torch.rand(6, 1, 16, 16), torch.arange(3).repeat_interleave(2), torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        plain = model.adapt(support, support_y, 3)(query)
        expected = prototype_logits(model.backbone(query),
                                    torch.stack([model.backbone(support)[support_y == k].mean(0) for k in range(3)]),
                                    "euclidean")
        assert torch.allclose(plain, expected, atol=1e-5)  # test_views=1: the method as before
        model.set_test_options(test_views=3)
        tta = model.adapt(support, support_y, 3)(query)
        embed = lambda x: torch.stack([model.backbone(shift(x, dy, dx)) for dy, dx in view_shifts(3, 16)]).mean(0)  # noqa: E731
        protos = torch.stack([embed(support)[support_y == k].mean(0) for k in range(3)])
        assert torch.allclose(tta, prototype_logits(embed(query), protos, "euclidean"), atol=1e-4)
        assert torch.equal(tta, model.adapt(support, support_y, 3)(query))  # deterministic
        assert not torch.allclose(tta, plain)
    assert model.get_params() == {"distance": "euclidean", "normalize": False, "test_views": 3}
    assert ProtoNet(Conv4(1, 8)).get_params() == {"distance": "euclidean", "normalize": False, "test_views": 1}
    with pytest.raises(ConfigError, match="test_views"):
        model.set_test_options(test_views=0)
    with pytest.raises(ConfigError, match="takes test_views"):
        model.set_test_options(inner_steps=3)
    with pytest.raises(ConfigError, match="test_views"):
        build_method("protonet", MLP(4), test_views=10)
    with pytest.raises(ConfigError, match="8x8"):
        ProtoNet(MLP(4), test_views=2).adapt(torch.rand(2, 4, 1, 1), torch.tensor([0, 1]), 2)


def test_training_is_unchanged_by_test_views():
    torch.manual_seed(0)
    a = ProtoNet(Conv4(1, 8))
    b = ProtoNet(Conv4(1, 8), test_views=5)
    b.load_state_dict(a.state_dict())
    episode = EpisodeSampler(from_arrays(torch.rand(30, 1, 16, 16), np.repeat(np.arange(3), 10)), None, 3, 1, 2).episode(0)
    assert torch.equal(a.episode_logits(episode), b.episode_logits(episode))


# -- larger inputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [42, 56])
def test_backbones_take_larger_inputs(size):
    spatial = size // 16  # four 2x2 poolings, rounding down
    assert feature_dim(Conv4(1, 8), (1, size, size)) == 8 * spatial * spatial
    assert feature_dim(ResNet12(1, (4, 4, 4, 6)), (1, size, size)) == 6
    model = build_method("protonet", Conv4(1, 8), test_views=3).eval()
    with torch.no_grad():
        logits = model.adapt(torch.rand(4, 1, size, size), torch.tensor([0, 0, 1, 1]), 2)(torch.rand(3, 1, size, size))
    assert logits.shape == (3, 2)


def test_evaluate_within_groups_without_groups_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fewshot", "evaluate", "pixel-ncm", "--dataset", "digits",
                           "--within-groups", "--episodes", "2", "--runs", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "names no class groups" in proc.stderr and "Traceback" not in proc.stderr


def test_train_and_evaluate_flags_reach_the_config_and_sampler():
    from fewshot.cli.flags import config_from_args
    from fewshot.cli.main import build_parser

    args, _ = build_parser().parse_known_args(["train", "protonet", "--augment", "shift", "--out", "unused"])
    assert config_from_args(args).augment == "shift"
    args, _ = build_parser().parse_known_args(["train", "protonet", "--out", "unused"])
    assert config_from_args(args).augment == "none"
    assert build_parser().parse_known_args(["evaluate", "run", "--within-groups"])[0].within_groups is True
