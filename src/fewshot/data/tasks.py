"""Episode samplers by dataset name: class datasets and generated task families alike.

A class dataset (``digits``, ``omniglot``, ...) is loaded once into a
:class:`~fewshot.data.base.ClassDataset`, and :class:`~fewshot.data.episodes.EpisodeSampler`
draws N-way K-shot classification episodes from the classes of a split. A generated
family (``sinusoid``, the regression tasks of Finn et al., 2017, section 5.1) has no
data to load: its sampler draws each task on the fly, and its splits are disjoint
random streams. The trainer and ``fewshot evaluate`` ask this module for a sampler and
never need to know which kind a dataset is; a sampler's ``kind`` names its task kind
(:mod:`fewshot.taskkind`), which says how episodes are scored (accuracy for
classification, mean squared error for regression, return for reinforcement) and where
they may be made (reinforcement rollouts: on the host).
"""

from __future__ import annotations

from numbers import Integral
from typing import Union

from ..config import MAX_SEED
from ..errors import ConfigError
from ..taskkind import CLASSIFICATION, TaskKind, task_kind as kind_named
from .base import ClassDataset
from .domains import MultiDomainSampler
from .episodes import EpisodeSampler
from ..registry import Registry
from ..rl.tasks import ENV_FAMILIES, EnvTaskSampler, sampler_class
from .sinusoid import SinusoidSampler

Sampler = Union[EpisodeSampler, MultiDomainSampler, SinusoidSampler, EnvTaskSampler]

#: Generated task families: name -> sampler class (``(shot, query, seed, split)``).
#: Environment families (:mod:`fewshot.rl`) are generated families of kind
#: ``"reinforcement"``: episodes are tasks to roll out, scored by return. A user's
#: family joins with ``TASK_FAMILIES.register(name, sampler_class(family))``.
TASK_FAMILIES: Registry[type[SinusoidSampler] | type[EnvTaskSampler]] = Registry(
    "task family", "`fewshot data list` lists them")
TASK_FAMILIES.register("sinusoid", SinusoidSampler)
for _family in ENV_FAMILIES.values():
    TASK_FAMILIES.register(_family.name, sampler_class(_family))
del _family

# The model of Finn et al. (2017, section 5.1) for sinusoids: an MLP with two hidden
# layers of 40 ReLU units and one output, the prediction. The output width is not a
# choice (one target per point); the hidden widths are defaults a run may override.
_BACKBONE_DEFAULTS = {"sinusoid": {"mlp": {"hidden": [40, 40], "out_features": 1}}}


def is_generated(name: str) -> bool:
    """Whether ``name`` is a generated task family (nothing to load)."""
    return name in TASK_FAMILIES


def task_kind(name: str) -> TaskKind:
    """The :class:`~fewshot.taskkind.TaskKind` of dataset ``name``: a generated family's
    declared kind (regression, reinforcement); every class dataset's is classification."""
    return kind_named(TASK_FAMILIES[name].kind) if name in TASK_FAMILIES else CLASSIFICATION


def method_defaults(name: str) -> dict:
    """Method options a family implies (an environment family: the policy's distribution)."""
    return dict(getattr(TASK_FAMILIES.get(name), "method_defaults", {}))


def default_backbone(name: str) -> str | None:
    """The backbone a dataset's kind uses when none is given (an environment family's policy: ``mlp``)."""
    return task_kind(name).default_backbone


def check_family_options(name: str, options: dict) -> None:
    """A generated family takes no dataset options (``--image-size``, ``--path`` ...)."""
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise ConfigError(f"dataset '{name}' is generated and takes no option {', '.join(given)}")


def input_shape(name: str, data: ClassDataset | None) -> tuple[int, ...]:
    """The shape of one input: a class dataset's image shape, or a family's (``(1,)`` for sinusoids)."""
    if name in TASK_FAMILIES:
        return tuple(TASK_FAMILIES[name].input_shape)
    if data is None:
        raise ConfigError(f"dataset '{name}' must be loaded before its input shape is known")
    return tuple(data.image_shape)


def splits(name: str, data: ClassDataset | None) -> tuple[str, ...]:
    """The split names of a dataset or family."""
    if name in TASK_FAMILIES:
        return tuple(TASK_FAMILIES[name].splits)
    return tuple(data.splits) if data is not None else ()


def backbone_defaults(name: str, backbone: str) -> dict:
    """Backbone options a family implies (sinusoid: ``MLP(1, (40, 40), out_features=1)``).

    A family's inputs are not images: it refuses backbones it has no default for.
    """
    defaults = _BACKBONE_DEFAULTS.get(name) or getattr(TASK_FAMILIES.get(name), "backbone_defaults", None)
    if not defaults:
        return {}
    if backbone not in defaults:
        kind = "scalar" if name in _BACKBONE_DEFAULTS else "vector"
        raise ConfigError(f"dataset '{name}' has {kind} inputs, not images; use --backbone "
                          f"{' or '.join(sorted(defaults))}, not '{backbone}'")
    return dict(defaults[backbone])


def make_sampler(name: str, data: ClassDataset | None, split: str | None, way: int, shot: int, query: int,
                 seed: int = 0, device=None, within_groups: bool = False) -> Sampler:
    """The sampler of ``split`` of dataset ``name``: episode ``i`` of it depends only on
    these arguments and ``i``. ``data`` is the loaded class dataset (``None`` for a
    family); ``way`` is ignored by a regression family (its episodes are single tasks).
    ``device``: where its episodes are made (default the CPU); the same episodes on any.
    ``within_groups``: every episode's classes from one of the dataset's class groups
    (Omniglot: one alphabet; see :class:`~fewshot.data.episodes.EpisodeSampler`)."""
    # Samplers derive seeds from this one (validation adds 1): room above the largest user seed.
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed <= 2 * MAX_SEED + 1:
        raise ConfigError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    if name in TASK_FAMILIES and within_groups:
        raise ConfigError(f"'{name}' is a generated task family: it has no class groups to draw episodes within")
    if name in TASK_FAMILIES:
        family, kind = TASK_FAMILIES[name], task_kind(name)
        if kind.host_only:  # its tasks are simulated on the host: they take no device
            kind.check_device(device, name)
            return family(shot, query, seed, split=split)
        return family(shot, query, seed, split=split, device=device)
    if data is None:
        raise ConfigError(f"dataset '{name}' must be loaded to sample episodes from it")
    if data.info.get("domains"):  # several domains (fewshot.data.domains): each episode from one of them
        return MultiDomainSampler(data, split, way, shot, query, seed=seed, device=device, within_groups=within_groups)
    return EpisodeSampler(data, split, way, shot, query, seed=seed, device=device, within_groups=within_groups)


__all__ = ["Sampler", "TASK_FAMILIES", "backbone_defaults", "check_family_options", "default_backbone", "input_shape",
           "is_generated", "make_sampler", "method_defaults", "splits", "task_kind"]
