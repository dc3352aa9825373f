"""The photo-regions dataset (regions of scikit-learn's sample photos as classes) and its
place in model selection: a zoo source and a held-out task group."""

import pytest
import torch

from fewshot.data import EpisodeSampler, load_dataset
from fewshot.errors import ConfigError
from fewshot.select.recipes import ZooSpec, build_zoo
from fewshot.select.tasks import TaskSource, sample_tasks


def test_regions_are_deterministic_classes_with_fixed_disjoint_splits():
    a = load_dataset("photo-regions", image_size=16, per_class=6)
    b = load_dataset("photo-regions", image_size=16, per_class=6)
    assert torch.equal(a.images, b.images) and a.images.shape == (2 * 12 * 6, 3, 16, 16)
    assert a.class_names[0] == "china/r0c0" and a.class_names[-1] == "flower/r2c3"
    train, test = set(a.splits["train"]), set(a.splits["test"])
    assert len(train) == len(test) == 12 and not train & test and train | test == set(range(24))
    # The same grid cells of both photos go to training, whatever the seed of the patches.
    assert {c % 12 for c in train} == {c - 12 for c in train if c >= 12}
    other = load_dataset("photo-regions", image_size=16, per_class=6, seed=1)
    assert other.splits == a.splits and not torch.equal(other.images, a.images)


def test_grey_is_the_luma_of_the_colour_patches():
    rgb = load_dataset("photo-regions", image_size=8, per_class=2).images.float()
    grey = load_dataset("photo-regions", image_size=8, per_class=2, channels=1).images.float()
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert grey.shape == (48, 1, 8, 8) and (grey - luma).abs().max() <= 0.5 + 1e-4


@pytest.mark.parametrize("options, words", [({"channels": 2}, "channels"), ({"max_side": 300}, "exceeds a region"),
                                            ({"min_side": 90, "max_side": 50}, "min_side"),
                                            ({"rows": 0}, "rows")])
def test_bad_options_are_one_line_errors(options, words):
    with pytest.raises(ConfigError, match=words):
        load_dataset("photo-regions", **options)


def test_patches_of_a_region_look_more_alike_than_patches_of_other_regions():
    # What makes regions classes: nearest-centroid on raw pixels beats chance by far.
    data = load_dataset("photo-regions", image_size=8, per_class=20)
    correct = []
    sampler = EpisodeSampler(data, "test", 5, 5, 10, seed=0)
    for episode in map(sampler.episode, range(20)):
        centroids = episode.support_x.flatten(1).view(5, 5, -1).mean(1)
        predicted = torch.cdist(episode.query_x.flatten(1), centroids).argmin(1)
        correct.append((predicted == episode.query_y).float().mean())
    assert float(torch.stack(correct).mean()) > 0.5


def test_photos_are_a_task_group_of_held_out_regions_and_a_zoo_source(tmp_path):
    tasks = sample_tasks(14, ["digits", "photos"])
    photos = [t for t in tasks if t.group == "photos"]
    assert [t.index for t in photos] == [2, 5, 8, 11] and {t.way for t in photos} <= {2, 5, 10}  # 3 groups in turn
    source = TaskSource(["photos"], 0)
    data = source.dataset("photo-regions")
    assert data.image_shape[0] == 1 and set(data.splits["photos"]) == set(data.splits["test"])
    episode = source.episode(sample_tasks(1, ["photos"])[0])
    assert episode.support_x.shape[1] == 1
    spec = ZooSpec("conv-photos", "conv4", "protonet", "photos", {"width": 8, "depth": 2}, image_size=16,
                   train={"train_way": 5, "train_query": 2})
    zoo = build_zoo(tmp_path / "zoo", [spec], max_steps=3, progress=False)
    meta = zoo.metadata("conv-photos")["source"]
    assert meta["dataset"] == "photo-regions" and meta["split"] == "train" and meta["num_classes"] == 12
    assert zoo.load("conv-photos").metadata["image_shape"] == [1, 16, 16]
