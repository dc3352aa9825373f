"""Several source domains as one dataset, and episodes drawn from one domain at a time.

``omniglot,omniglot:blur`` (domains joined by commas, each a dataset or a styled dataset,
:mod:`fewshot.data.styles`) loads as one :class:`~fewshot.data.base.ClassDataset` whose
classes are those of every domain, domain after domain, each named ``DOMAIN/CLASS``; its
``info["domains"]`` says which class ids each domain holds and its weight. A domain may carry
a weight: ``omniglot@3,omniglot:blur@1`` draws three episodes of Omniglot for one of the
blurred one (weights are relative; default 1 each).

:class:`MultiDomainSampler` draws episode ``i`` by first choosing its domain, with probability
proportional to the weights among the domains whose split has at least ``way`` classes, from
the generator ``(seed, i, DOMAIN_STREAM)``; then the domain's own
:class:`~fewshot.data.episodes.EpisodeSampler` (seed ``seed``) gives its episode ``i``. Every
episode's classes thus come from one domain (as in multi-domain meta-training, Triantafillou
et al.'s Meta-Dataset, arXiv:1903.03096, and Tseng et al., arXiv:2001.08735), and episode ``i``
depends only on (domains, weights, split, way, shot, query, seed, i).

**Leave one domain out** (:func:`leave_one_out`): for domains ``D1 .. Dn``, train on all but
``Dk`` and test on ``Dk``, for each ``k``: the protocol of Tseng et al.'s section 4.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .base import ClassDataset
from .episodes import Episode, EpisodeSampler

#: Separates the domains of a multi-domain name, and a domain from its weight.
DOMAIN_SEPARATOR, WEIGHT_SEPARATOR = ",", "@"
#: Third seed word of the domain choice, apart from the episodes' own ``(seed, i)`` streams.
DOMAIN_STREAM = 0x646F6D  # "dom"
MAX_DOMAINS = 64


def is_multi_domain(name: str) -> bool:
    return DOMAIN_SEPARATOR in name or WEIGHT_SEPARATOR in name


def parse_domains(name: str) -> list[tuple[str, float]]:
    """``"a@3,b"`` as ``[("a", 3.0), ("b", 1.0)]``; a bad weight or a repeated domain is one line."""
    parts = [p.strip() for p in name.split(DOMAIN_SEPARATOR)]
    if not all(parts) or len(parts) > MAX_DOMAINS:
        raise ConfigError(f"'{name}' must list 1 to {MAX_DOMAINS} domains separated by commas, e.g. omniglot,omniglot:blur")
    out = []
    for part in parts:
        domain, _, weight = part.partition(WEIGHT_SEPARATOR)
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"domain weight '{weight}' of '{domain}' must be a positive number, e.g. {domain}@2")
        out.append((domain, value))
    names = [d for d, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"'{name}' names a domain twice; give it a larger weight instead (e.g. {names[0]}@2)")
    return out


def combine(name: str, domains: list[tuple[str, float, ClassDataset]]) -> ClassDataset:
    """One dataset of every domain's classes (see the module docstring); every domain's images
    must have one shape."""
    shapes = {tuple(d.image_shape) for _, _, d in domains}
    if len(shapes) > 1:
        listed = ", ".join(f"{n}: {'x'.join(map(str, d.image_shape))}" for n, _, d in domains)
        raise DataError(f"the domains of '{name}' have images of different shapes ({listed}); give them one size "
                        "(--image-size) and one number of channels")
    images, labels, names, groups, info, splits = [], [], [], [], [], {}
    start = 0
    for domain, weight, data in domains:
        images.append(data.images.to(torch.float32) if any(d.images.dtype == torch.float32 for _, _, d in domains)
                      else data.images)
        labels.append(data.labels + start)
        names += [f"{domain}/{c}" for c in data.class_names]
        own = data.class_groups or [""] * data.num_classes
        groups += [f"{domain}/{g}" if g else domain for g in own]
        for split, classes in data.splits.items():
            splits.setdefault(split, []).extend(c + start for c in classes)
        info.append({"name": domain, "weight": weight, "classes": [start, start + data.num_classes]})
        start += data.num_classes
    return ClassDataset(name, torch.cat(images), torch.cat(labels), names, splits, {"domains": info},
                        class_groups=groups)


class MultiDomainSampler:
    """Episodes of a multi-domain dataset, each from one domain (see the module docstring).

    Takes and gives what :class:`~fewshot.data.episodes.EpisodeSampler` does; ``weights``
    (one per domain, relative) replaces the dataset's own.
    """

    kind = "classification"

    def __init__(self, dataset: ClassDataset, split: str | None, way: int, shot: int, query: int, seed: int = 0,
                 device=None, within_groups: bool = False, weights: list[float] | None = None):
        self.dataset, self.split, self.seed, self.within_groups = dataset, split, int(seed), within_groups
        domains = dataset.info.get("domains")
        if not domains:
            raise DataError(f"{dataset.name} is not a multi-domain dataset (name its domains: A,B)")
        weights = [float(d["weight"]) for d in domains] if weights is None else [float(w) for w in weights]
        if len(weights) != len(domains) or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ConfigError(f"give {len(domains)} positive domain weights, got {weights}")
        classes = set(dataset.split_classes(split))
        self.domains, self.samplers, kept = [], [], []
        for d, w in zip(domains, weights):
            own = [c for c in range(*d["classes"]) if c in classes]
            if len(own) < way:  # too few classes in this split for an episode: the domain sits out
                continue
            view = ClassDataset(d["name"], dataset.images_on(device), dataset.labels, dataset.class_names,
                                {split or "all": own}, class_groups=dataset.class_groups)
            self.samplers.append(EpisodeSampler(view, split or "all", way, shot, query, seed, device, within_groups))
            self.domains.append(d["name"])
            kept.append(w)
        if not self.samplers:
            raise DataError(f"no domain of {dataset.name} has {way} classes in split '{split or 'all'}'")
        self.weights = np.asarray(kept) / sum(kept)
        first = self.samplers[0]
        self.way, self.shot, self.query, self.device = first.way, first.shot, first.query, first.device
        self._weights_given = weights

    def __repr__(self) -> str:
        mix = ", ".join(f"{d} {w:.2f}" for d, w in zip(self.domains, self.weights))
        return (f"MultiDomainSampler({self.dataset.name}/{self.split or 'all'}, {self.way}-way {self.shot}-shot "
                f"{self.query}-query, domains {mix}, seed={self.seed})")

    def on(self, device) -> "MultiDomainSampler":
        device = torch.device("cpu") if device is None else torch.device(device)
        if device == self.device:
            return self
        return MultiDomainSampler(self.dataset, self.split, self.way, self.shot, self.query, self.seed, device,
                                  self.within_groups, self._weights_given)

    def domain_of(self, i: int) -> int:
        """Which domain (position in :attr:`domains`) episode ``i`` comes from."""
        rng = np.random.default_rng((self.seed, int(i), DOMAIN_STREAM))
        return int(rng.choice(len(self.weights), p=self.weights))

    def indices(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`EpisodeSampler.indices`: the chosen class positions in the domain's split, and image indices."""
        return self.samplers[self.domain_of(i)].indices(i)

    def episode(self, i: int) -> Episode:
        k = self.domain_of(i)
        return dataclasses.replace(self.samplers[k].episode(i), domain=self.domains[k])

    def batch(self, step: int, size: int) -> list[Episode]:
        return [self.episode(step * size + j) for j in range(size)]

    def suite(self, count: int) -> Iterator[Episode]:
        return (self.episode(i) for i in range(count))


def leave_one_out(domains: list[str]) -> list[tuple[str, str]]:
    """``(sources, target)`` for each domain held out: ``sources`` the multi-domain name of the
    others (``"a,b"``), ``target`` the one left out."""
    if len(domains) < 2:
        raise ConfigError("leaving one domain out needs at least two domains")
    if len(set(domains)) != len(domains):
        raise ConfigError(f"domains {domains} name one twice")
    return [(DOMAIN_SEPARATOR.join(d for d in domains if d != held), held) for held in domains]


def load_domains(name: str, load: Callable[[str], ClassDataset]) -> ClassDataset:
    """The multi-domain dataset ``name``, each domain loaded by ``load(domain)``."""
    return combine(name, [(d, w, load(d)) for d, w in parse_domains(name)])


__all__ = ["DOMAIN_SEPARATOR", "DOMAIN_STREAM", "MultiDomainSampler", "WEIGHT_SEPARATOR", "combine", "is_multi_domain",
           "leave_one_out", "load_domains", "parse_domains"]
