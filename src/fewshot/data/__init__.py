"""Datasets and episodes.

Every dataset loads into one form, :class:`ClassDataset`; :class:`EpisodeSampler`
draws N-way K-shot episodes from any split of it.
"""

from __future__ import annotations

import inspect
from typing import Callable

from ..errors import ConfigError
from .base import ClassDataset, from_arrays, to_float_images
from .cifar import load_cifar10, load_cifar_fs, load_fc100
from .digits import load_digits_dataset
from .download import data_root
from .episodes import Episode, EpisodeSampler
from .folder import load_folder
from .mnist import load_mnist
from .omniglot import load_omniglot
from .sinusoid import SinusoidSampler, SinusoidTask

DATASETS: dict[str, Callable[..., ClassDataset]] = {
    "digits": load_digits_dataset,
    "omniglot": load_omniglot,
    "mnist": load_mnist,
    "cifar-fs": load_cifar_fs,
    "fc100": load_fc100,
    "cifar10": load_cifar10,
    "folder": load_folder,
}


def load_dataset(name: str, root=None, **options) -> ClassDataset:
    """Load a dataset by name; ``options`` go to its loader (e.g. ``image_size=28``).

    Options a loader does not take are rejected with the list of those it does.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(DATASETS))}")
    loader = DATASETS[name]
    accepted = [p for p in inspect.signature(loader).parameters if p != "root"]
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ConfigError(f"dataset '{name}' takes no option {', '.join(unknown)}; it takes: {', '.join(accepted) or 'none'}")
    return loader(root, **given)


__all__ = ["ClassDataset", "DATASETS", "Episode", "EpisodeSampler", "SinusoidSampler", "SinusoidTask", "data_root",
           "from_arrays", "load_dataset", "to_float_images"]
