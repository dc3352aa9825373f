"""The cross-domain protocol: the same seeded suites on each target domain, one table.

A model trained on one domain (Omniglot) is tested on others (digits, ``omniglot:blur``,
:mod:`fewshot.data.styles`): :func:`evaluate_domains` runs every model on suite
(split, way, shot, query, seed, episodes) of each domain, so that on one domain every model
sees identical episodes and their per-episode scores pair up. The
:class:`CrossDomainTable` it returns holds mean ± 95 % CI per (model, domain) and the
paired difference of any two models per domain (mean of the per-episode differences, normal
95 % interval), as BSCD-FSL (Guo et al., arXiv:1912.07200) and Meta-Dataset's held-out
domains (Triantafillou et al., arXiv:1903.03096) report cross-domain few-shot results, here
with paired intervals.

**Which images.** A domain built on the training dataset (``omniglot:blur`` for a model
trained on ``omniglot``) is loaded with the training run's dataset options, so only the style
changes; any other dataset is loaded at the model's input size (``image_size``) where its
loader takes one. Images of another shape or number of channels are refused, in one line.

**Transductive results are marked**, as everywhere (:mod:`fewshot.evaluate`): MAML's
test-time BatchNorm, or test-time statistics that use the queries, make a result
transductive, and the table says so.

**Surgical fine-tuning's block, chosen per target domain** (:func:`surgical_for_domain`; Lee,
Chen, Tajwar, Kumar, Yao, Liang and Finn, "Surgical Fine-Tuning Improves Adaptation to
Distribution Shifts", ICLR 2023, arXiv:2210.11466). Which block is best to fine-tune
depends on the shift (the first for input-level shifts, the last for output-level ones), and
Lee et al. choose it per target distribution on held-out data of it. Here: on validation
episodes of the target domain whose classes are *disjoint* from the test episodes' (its
``val`` split, else its ``train`` split, when tested on ``test``; :func:`choose_block`: the
best mean accuracy, ties to the lower block), so the test episodes, their queries included,
are never looked at; a validation split sharing a class with the test's is refused. A domain
without such classes gets the block chosen by cross-validation inside each support set
(FineTune's ``cv=True`` with ``cv_grid={"block": [...]}``, :mod:`fewshot.methods.transfer`).
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .data import DATASETS, ClassDataset, load_dataset, make_sampler
from .data.domains import is_multi_domain, parse_domains
from .data.styles import STYLE_SEPARATOR
from .errors import ConfigError, DataError
from .evaluate import EvalResult, evaluate
from .methods.base import Method
from .methods.transfer import FineTune, adapt_method
from .models.blocks import split_blocks
from .metrics import confidence_interval

#: The label of the training domain's own row.
IN_DOMAIN = "in-domain"


def base_dataset(domain: str) -> str:
    """The dataset a domain is built on: ``omniglot`` for ``omniglot:blur``."""
    return domain.split(STYLE_SEPARATOR)[0]


def domain_options(domain: str, image_shape: Sequence[int], source: str | None = None,
                   source_options: Mapping | None = None) -> dict:
    """The loader options of target ``domain`` for a model of inputs ``image_shape`` trained on
    ``source`` with ``source_options`` (see the module docstring)."""
    if is_multi_domain(domain):
        raise ConfigError(f"target domain '{domain}' names several domains; test on each one (--domains A B)")
    base = base_dataset(domain)
    if source is not None and base in {base_dataset(d) for d, _ in parse_domains(source)}:
        return dict(source_options or {})  # the training data, restyled: only the style changes
    accepted = inspect.signature(DATASETS[base]).parameters
    return {"image_size": int(image_shape[-1])} if "image_size" in accepted else {}


@dataclass
class CrossDomainTable:
    """Per-episode results of models (rows) on domains (columns): ``results[model][domain]``.

    ``in_domain`` names the domain each model was trained on, where known."""

    results: dict[str, dict[str, EvalResult]]
    domains: list[str]
    in_domain: dict[str, str] = field(default_factory=dict)
    suite: dict = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(self.results)

    def paired(self, a: str, b: str, domain: str) -> tuple[float, float]:
        """Mean and 95 % half-width of ``a``'s score minus ``b``'s on ``domain``, episode by episode."""
        for m in (a, b):
            if m not in self.results:
                raise ConfigError(f"no model '{m}' in this table; it has: {', '.join(self.models)}")
        if domain not in self.results[a] or domain not in self.results[b]:
            raise ConfigError(f"'{a}' and '{b}' were not both tested on domain '{domain}'")
        return confidence_interval(self.results[a][domain].scores - self.results[b][domain].scores)

    def best(self, domain: str) -> str:
        """The model of the highest mean score on ``domain``."""
        return max((m for m in self.models if domain in self.results[m]), key=lambda m: self.results[m][domain].value)

    def to_dict(self) -> dict:
        rows = []
        for model, by_domain in self.results.items():
            for domain, r in by_domain.items():
                rows.append({"model": model, "domain": domain, "in_domain": self.in_domain.get(model) == domain,
                             "accuracy": r.value, "ci95": r.ci95, "episodes": r.episodes,
                             "transductive": r.transductive, "seconds": round(r.seconds, 3)})
        pairs = [{"domain": d, "a": a, "b": b, "difference": mean, "ci95": ci}
                 for d in self.domains for a, b in itertools.combinations(self.models, 2)
                 if d in self.results[a] and d in self.results[b] for mean, ci in [self.paired(a, b, d)]]
        return {"suite": self.suite, "domains": self.domains, "models": self.models, "in_domain": self.in_domain,
                "results": rows, "paired_differences": pairs,
                "best": {d: self.best(d) for d in self.domains if any(d in r for r in self.results.values())}}

    def render(self) -> str:
        """A text table: a row per model, a column per domain, ``mean ± CI``; under it, each other
        model's paired difference from the first, per domain."""
        head = [f"{'model':24s}"] + [f"{d[:18]:>18s}" for d in self.domains]
        lines = [" ".join(head)]
        for model, by_domain in self.results.items():
            cells = []
            for d in self.domains:
                r = by_domain.get(d)
                mark = ("*" if self.in_domain.get(model) == d else "") + ("T" if r is not None and r.transductive else "")
                cells.append(f"{'-' if r is None else f'{r.value:.1f} ± {r.ci95:.1f}{mark}':>18s}")
            lines.append(" ".join([f"{model[:24]:24s}"] + cells))
        first = self.models[0]
        for model in self.models[1:]:
            cells = []
            for d in self.domains:
                ok = d in self.results[first] and d in self.results[model]
                cells.append(f"{(lambda m, c: f'{m:+.1f} ± {c:.1f}')(*self.paired(model, first, d)) if ok else '-':>18s}")
            lines.append(" ".join([f"{(model + ' - ' + first)[:24]:24s}"] + cells))
        s = self.suite
        lines.append(f"{s.get('way')}-way {s.get('shot')}-shot, {s.get('query')} queries per class, "
                     f"{s.get('episodes')} episodes (seed {s.get('seed')}) per domain, the same episodes for every "
                     "model; mean ± 95% CI; * the training domain; T transductive")
        return "\n".join(lines)


def evaluate_domains(models: Mapping[str, Method], domains: Sequence[str], *, image_shape: Sequence[int],
                     source: str | None = None, source_options: Mapping | None = None, split: str = "test",
                     way: int = 5, shot: int = 1, query: int = 15, episodes: int = 600, seed: int = 0,
                     data_root=None, device=None, progress: bool = False) -> CrossDomainTable:
    """Every model of ``models`` (label -> method, all of inputs ``image_shape``) on the suite of
    each domain; ``source`` (the training domain, with ``source_options``), when given, is the
    first column, labelled :data:`IN_DOMAIN` in the table's ``in_domain``."""
    if not models:
        raise ConfigError("give at least one model to test across domains")
    targets = ([source] if source is not None else []) + [d for d in domains if d != source]
    if not targets:
        raise ConfigError("name at least one target domain (--domains D1 D2 ...)")
    results: dict[str, dict[str, EvalResult]] = {m: {} for m in models}
    for domain in targets:
        options = dict(source_options or {}) if domain == source else \
            domain_options(domain, image_shape, source, source_options)
        data = load_dataset(domain, data_root, **options)
        if list(data.image_shape) != list(image_shape):
            raise DataError(f"domain '{domain}' gives {'x'.join(map(str, data.image_shape))} images, but the model "
                            f"takes {'x'.join(map(str, image_shape))}; test on domains of the same channels")
        sampler = make_sampler(domain, data, split, way, shot, query, seed=seed)
        for label, method in models.items():
            results[label][domain] = evaluate(method, sampler, episodes, progress=progress, device=device,
                                              desc=f"{label} on {domain}")
    return CrossDomainTable(results, targets, {m: source for m in models} if source else {},
                            {"split": split, "way": way, "shot": shot, "query": query, "episodes": episodes,
                             "seed": seed})


#: Added to the test suite's seed for the validation episodes, as the trainer's validation suite does.
VALIDATION_SEED_OFFSET = 1


@dataclass
class BlockChoice:
    """How the block was chosen: ``how`` is ``"validation"`` (``block`` the winner, ``scores``
    and ``ci95`` each candidate's validation accuracy in %, on ``episodes`` episodes of
    ``split``) or ``"cross-validation"`` (``block`` None: chosen inside each support set)."""

    block: int | None
    how: str
    candidates: list[int]
    scores: dict[int, float] = field(default_factory=dict)
    ci95: dict[int, float] = field(default_factory=dict)
    episodes: int = 0
    split: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"block": self.block, "how": self.how, "candidates": self.candidates, "episodes": self.episodes,
                "split": self.split, "scores": {str(b): s for b, s in self.scores.items()},
                "ci95": {str(b): c for b, c in self.ci95.items()}}


def candidate_blocks(method: Method, blocks: Sequence[str] | None = None) -> list[int]:
    """Every block of ``method``'s backbone, bottom to top (:func:`fewshot.models.blocks.split_blocks`)."""
    return list(range(len(split_blocks(method.backbone, blocks))))


def choose_block(method: Method, validation, episodes: int = 50, *, test_classes: Sequence[int] | None = None,
                 candidates: Sequence[int] | None = None, progress: bool = False, **options: Any) -> BlockChoice:
    """The block whose surgical fine-tuning (with ``options``) scores best on ``episodes``
    episodes of the ``validation`` sampler; ``test_classes``, when given, must share no class
    with the validation episodes' (DataError otherwise)."""
    classes = set(int(c) for c in validation.dataset.split_classes(validation.split))
    shared = classes & set(int(c) for c in (test_classes or ()))
    if shared:
        raise DataError(f"the validation split '{validation.split}' shares {len(shared)} classes with the test "
                        "episodes: choose the block on classes the test never uses (another split), or by "
                        "cross-validation inside each support set")
    candidates = candidate_blocks(method, options.get("blocks")) if candidates is None else [int(b) for b in candidates]
    scores, ci95 = {}, {}
    for b in candidates:
        result = evaluate(adapt_method(method, "surgical", block=b, **options), validation, episodes,
                          progress=progress, desc=f"surgical block {b} (validation)")
        scores[b], ci95[b] = result.accuracy, result.ci95
    best = max(candidates, key=lambda b: (scores[b], -candidates.index(b)))  # ties: the earlier candidate
    return BlockChoice(best, "validation", candidates, scores, ci95, episodes, validation.split)


def surgical_for_domain(method: Method, dataset: ClassDataset, *, way: int, shot: int, query: int,
                        test_split: str = "test", val_splits: Sequence[str] = ("val", "train"), episodes: int = 50,
                        seed: int = 0,
                        candidates: Sequence[int] | None = None, progress: bool = False,
                        **options: Any) -> tuple[FineTune, BlockChoice]:
    """Surgical fine-tuning of ``method``'s backbone for target domain ``dataset`` (tested on
    ``test_split``), its block chosen on validation episodes (seed ``seed + 1``) of the first of
    ``val_splits`` with at least ``way`` classes, none of them the test's (digits: ``train``,
    the classes 0-4, for a model trained elsewhere), or, when there is none, by cross-validation
    inside each support set. Returns the adapted method and the choice."""
    candidates = candidate_blocks(method, options.get("blocks")) if candidates is None else [int(b) for b in candidates]
    test = set(dataset.split_classes(test_split))
    usable = [s for s in val_splits if s in dataset.splits and len(dataset.split_classes(s)) >= way
              and not test & set(dataset.split_classes(s))]
    if not usable:
        adapted = adapt_method(method, "surgical", cv=True, cv_grid={"block": candidates}, **options)
        return adapted, BlockChoice(None, "cross-validation", candidates)
    validation = make_sampler(dataset.name, dataset, usable[0], way, shot, query, seed=seed + VALIDATION_SEED_OFFSET)
    choice = choose_block(method, validation, episodes, test_classes=sorted(test), candidates=candidates,
                          progress=progress, **options)
    return adapt_method(method, "surgical", block=choice.block, **options), choice


__all__ = ["BlockChoice", "CrossDomainTable", "IN_DOMAIN", "VALIDATION_SEED_OFFSET", "base_dataset", "candidate_blocks",
           "choose_block", "domain_options", "evaluate_domains", "surgical_for_domain"]
