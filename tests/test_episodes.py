"""Episode sampling: determinism, labels, disjointness, error messages; from_arrays checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshot.data import ClassDataset, EpisodeSampler, from_arrays
from fewshot.errors import ConfigError, DataError


def indexed_dataset(counts=(6, 7, 8, 9, 10, 11), dtype=torch.uint8) -> ClassDataset:
    """Images whose two pixels spell their own index (base 256), so episodes can be traced back."""
    labels = np.repeat(np.arange(len(counts)), counts)
    index = np.arange(len(labels))
    pixels = np.stack([index // 256, index % 256], axis=1).reshape(-1, 1, 1, 2)
    splits = {"train": [0, 1, 2, 3], "test": [4, 5]}
    images = torch.from_numpy(pixels.astype(np.uint8)).to(dtype)
    return ClassDataset("toy", images, torch.from_numpy(labels), [f"c{i}" for i in range(len(counts))], splits)


def traced(dataset: ClassDataset, x: torch.Tensor) -> np.ndarray:
    """Dataset indices of the images of an episode."""
    scale = 255.0 if dataset.images.dtype == torch.uint8 else 1.0
    pixels = torch.round(x.reshape(len(x), 2) * scale).long().numpy()
    return pixels[:, 0] * 256 + pixels[:, 1]


def same(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("support_x", "support_y", "query_x", "query_y"))


def test_episode_i_is_deterministic_and_varies_with_i_and_seed():
    dataset = indexed_dataset()
    a, b = EpisodeSampler(dataset, "train", 3, 2, 3, seed=7), EpisodeSampler(dataset, "train", 3, 2, 3, seed=7)
    for i in (0, 1, 5, 1000):
        assert same(a.episode(i), b.episode(i)) and a.episode(i).classes == b.episode(i).classes
    assert not same(a.episode(0), a.episode(1))
    assert not same(a.episode(0), EpisodeSampler(dataset, "train", 3, 2, 3, seed=8).episode(0))
    # Resuming mid-run: a batch is exactly the corresponding run of episodes.
    assert all(same(x, a.episode(2 * 4 + j)) for j, x in enumerate(a.batch(2, 4)))
    assert all(same(x, a.episode(j)) for j, x in enumerate(a.suite(3)))


def test_labels_are_0_to_way_minus_1_support_class_major():
    dataset = indexed_dataset()
    episode = EpisodeSampler(dataset, "train", 4, 3, 2).episode(3)
    assert episode.way == 4 and episode.shot == 3
    assert episode.support_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert episode.query_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert episode.support_x.shape == (12, 1, 1, 2) and episode.query_x.shape == (8, 1, 1, 2)
    assert episode.support_x.dtype == torch.float32 and float(episode.support_x.max()) <= 1.0


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_support_and_query_are_disjoint_and_from_the_chosen_classes(dtype):
    dataset = indexed_dataset(dtype=dtype)
    sampler = EpisodeSampler(dataset, "train", 3, 2, 4, seed=1)
    for i in range(20):
        episode = sampler.episode(i)
        support, query = traced(dataset, episode.support_x), traced(dataset, episode.query_x)
        assert len(set(support)) == len(support) and len(set(query)) == len(query)
        assert not set(support) & set(query)
        assert set(episode.classes) <= set(dataset.splits["train"]) and len(set(episode.classes)) == 3
        # Label k of the episode is dataset class classes[k], for support and query alike.
        for x, y in ((support, episode.support_y), (query, episode.query_y)):
            true = dataset.labels[torch.from_numpy(x)]
            assert true.tolist() == [episode.classes[k] for k in y.tolist()]


def test_every_class_of_the_split_is_drawn():
    dataset = indexed_dataset()
    sampler = EpisodeSampler(dataset, "test", 2, 1, 1)
    assert {c for i in range(10) for c in sampler.episode(i).classes} == {4, 5}


def test_way_larger_than_split_is_refused():
    with pytest.raises(DataError, match=r"5-way episodes need 5 classes, but toy split 'test' has 2"):
        EpisodeSampler(indexed_dataset(), "test", 5, 1, 1)


def test_shot_plus_query_larger_than_smallest_class_names_it():
    with pytest.raises(DataError, match=r"class 'c0' of toy has 6 images; 3-shot 4-query needs 7"):
        EpisodeSampler(indexed_dataset(), "train", 2, 3, 4)


def test_omniglot_class_too_small_message(omniglot):
    with pytest.raises(DataError, match=r"^class '[^']+/character\d\d/rot\d{3}' of omniglot has 20 images; "
                                        r"5-shot 16-query needs 21$"):
        EpisodeSampler(omniglot, "train", 5, 5, 16)


def test_omniglot_episode_shapes_and_split(omniglot):
    episode = EpisodeSampler(omniglot, "test", 20, 5, 15, seed=3).episode(0)
    assert episode.support_x.shape == (100, 1, 28, 28) and episode.query_x.shape == (300, 1, 28, 28)
    assert set(episode.classes) <= set(omniglot.splits["test"])


@pytest.mark.parametrize("way, shot, query", [(0, 1, 1), (2, 0, 1), (2, 1, 0), (-1, 1, 1), (2, 1.5, 1), (2, "1", 1)])
def test_non_positive_or_non_integer_sizes_are_config_errors(way, shot, query):
    with pytest.raises(ConfigError, match="must be a positive integer"):
        EpisodeSampler(indexed_dataset(), "train", way, shot, query)


def test_unknown_split_is_a_config_error():
    with pytest.raises(ConfigError, match=r"toy has no split 'val'; its splits are: test, train"):
        EpisodeSampler(indexed_dataset(), "val", 2, 1, 1)


def test_float32_dataset_from_arrays_passes_values_through():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float64)
    y = np.repeat(["b", "a", "c", "d"], 10)
    dataset = from_arrays(x, y)
    assert dataset.images.dtype == torch.float32 and dataset.image_shape == (5, 1, 1)
    assert dataset.class_names == ["a", "b", "c", "d"]
    episode = EpisodeSampler(dataset, None, 3, 2, 2, seed=4).episode(0)
    # Float images are not rescaled: each support row is a row of x.
    rows = {tuple(np.round(r, 5)) for r in x.astype(np.float32)}
    assert all(tuple(np.round(r, 5)) in rows for r in episode.support_x.reshape(-1, 5).numpy())
    assert episode.support_x.abs().max() > 1.0


def test_from_arrays_shapes():
    assert from_arrays(np.zeros((4, 6, 7), np.uint8), [0, 1, 0, 1]).image_shape == (1, 6, 7)
    assert from_arrays(torch.zeros(4, 3, 5, 5), torch.tensor([0, 1, 0, 1])).image_shape == (3, 5, 5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_from_arrays_rejects_non_finite_values(bad):
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = bad
    with pytest.raises(DataError, match="NaN or infinite"):
        from_arrays(x, [0, 0, 1, 1])


def test_from_arrays_rejects_mismatched_lengths_and_bad_shapes():
    with pytest.raises(DataError, match="x has 4 rows but y has shape"):
        from_arrays(np.zeros((4, 3)), [0, 1, 0])
    with pytest.raises(DataError, match="x must be"):
        from_arrays(np.zeros(4), [0, 1, 0, 1])
    with pytest.raises(DataError, match="2 distinct labels but 3 class names"):
        from_arrays(np.zeros((4, 3)), [0, 1, 0, 1], class_names=["a", "b", "c"])
