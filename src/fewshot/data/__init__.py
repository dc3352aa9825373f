"""Datasets and episodes.

Every dataset loads into one form, :class:`ClassDataset`; :class:`EpisodeSampler`
draws N-way K-shot episodes from any split of it. Generated task families
(``sinusoid``) load nothing; :func:`~fewshot.data.tasks.make_sampler` gives the sampler
of either kind by name.
"""

from __future__ import annotations

import inspect
from typing import Callable

from ..errors import ConfigError
from ..params import validate
from .base import DATASETS, IN_MEMORY, ClassDataset, from_arrays, to_float_images
# The loaders register themselves in DATASETS where they are defined: importing them is what adds them.
from .cifar import load_cifar10, load_cifar_fs, load_fc100
from .cub import load_cub
from .digits import load_digits_dataset
from .domains import MultiDomainSampler, is_multi_domain, leave_one_out, load_domains
from .download import data_root
from .episodes import Episode, EpisodeSampler
from .folder import load_folder
from .miniimagenet import load_mini_imagenet
from .mnist import load_mnist
from .omniglot import load_omniglot
from .photos import load_photo_regions
from .sinusoid import SinusoidSampler, SinusoidTask
from .styles import STYLE_SEPARATOR, STYLES, split_domain, styled
from .tieredimagenet import load_tiered_imagenet
from .tasks import TASK_FAMILIES, check_family_options, is_generated, make_sampler, task_kind


def load_dataset(name: str, root=None, **options) -> ClassDataset:
    """Load a dataset by name; ``options`` go to its loader (e.g. ``image_size=28``).

    Options a loader does not take are rejected with the list of those it does. ``name`` may
    be a domain (:mod:`fewshot.data.styles`: ``omniglot:blur``, the dataset restyled) or several
    (:mod:`fewshot.data.domains`: ``omniglot,omniglot:blur``, each domain loaded with ``options``).
    """
    if name in TASK_FAMILIES:
        how = task_kind(name).train_example.format(name=name)
        raise ConfigError(f"'{name}' is a generated task family, not a dataset to load; train on it with `{how}`")
    if name.startswith(IN_MEMORY):
        raise ConfigError(f"'{name[len(IN_MEMORY):]}' was an in-memory dataset (from_arrays or built in Python), "
                          "which fewshot cannot load by name; evaluate the run in Python with that dataset "
                          "(evaluate(load_run(RUN)[1], EpisodeSampler(data, 'test', ...))), or name a dataset "
                          "fewshot can load (--dataset)")
    if is_multi_domain(name):
        dataset = load_domains(name, lambda domain: load_dataset(domain, root, **options))
        dataset.origin = {"name": name, "options": {k: v for k, v in options.items() if v is not None}}
        return dataset
    if STYLE_SEPARATOR in name:
        base, styles = split_domain(name)
        given = {k: v for k, v in options.items() if v is not None}
        dataset = styled(name, styles, {"dataset": base, "options": given, "root": str(data_root(root))},
                         lambda: load_dataset(base, root, **given))
        dataset.origin = {"name": name, "options": given}
        return dataset
    loader = DATASETS[name]
    accepted = [p for p in inspect.signature(loader).parameters if p != "root"]
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ConfigError(f"dataset '{name}' takes no option {', '.join(unknown)}; it takes: {', '.join(accepted) or 'none'}")
    _check_option_types(name, loader, given)
    validate(f"dataset '{name}' option", given, getattr(loader, "_parameter_constraints", {}))
    dataset = loader(root, **given)
    dataset.origin = {"name": name, "options": given}
    return dataset


def load_source(name: str, root=None, **options) -> ClassDataset | None:
    """What :func:`~fewshot.data.tasks.make_sampler` samples from: the loaded dataset
    ``name``, or ``None`` for a generated task family (which takes no options)."""
    if is_generated(name):
        check_family_options(name, options)
        return None
    return load_dataset(name, root, **options)


def _check_option_types(name: str, loader: Callable, options: dict) -> None:
    """Options (from a config file or flags) of the type of the loader's default, so a
    string where a number belongs is a one-line error, not a crash inside the loader."""
    defaults = {p.name: p.default for p in inspect.signature(loader).parameters.values()}
    for key, value in options.items():
        default = defaults.get(key)
        if default is None or default is inspect.Parameter.empty:
            continue
        kind = bool if isinstance(default, bool) else (int if isinstance(default, int) else type(default))
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"dataset '{name}' option {key} must be {kind.__name__}, got {value!r}")


__all__ = ["IN_MEMORY", "ClassDataset", "DATASETS", "Episode", "EpisodeSampler", "MultiDomainSampler", "STYLES",
           "SinusoidSampler", "SinusoidTask", "TASK_FAMILIES",
           "data_root", "from_arrays", "is_generated", "leave_one_out", "load_dataset", "load_source", "make_sampler", "to_float_images"]
