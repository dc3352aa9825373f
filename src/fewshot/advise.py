"""``fewshot advise``: which method (and transfer strategy) to use for a new problem.

The advice is learned from the ``evaluate`` records of the run store, by a model
simple enough to show its working:

1. every record is placed at its setting: way, shot, the size of the meta-training set
   its run learnt from (classes × images per class) and whether it was tested on
   another dataset than it was trained on (cross-domain);
2. records are grouped by suite (identical test episodes), and the suite nearest to
   the asked setting is chosen (:func:`distance`; among suites within half a unit of
   the nearest, the one comparing the most methods);
3. the method that did best on that suite is recommended, its accuracy there is the
   expected accuracy (± its 95% interval), and its paired difference to the runner-up
   on the same episodes says how sure the choice is. How often it won the other
   recorded suites is reported too.

With no usable records it falls back to documented rules, from the users' own notes:
fewer than 5 shots: Prototypical Networks; a small meta-training set (under 1,000
images): Relation Networks; otherwise MAML. For a cross-domain problem the rules add a
transfer strategy, ``lp-ft``: fine-tuning the backbone beats frozen meta-learned
features under domain shift (Chen et al., 2019), and probing before fine-tuning keeps
the pre-trained features (Kumar et al., 2022).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, FewShotError
from .io import read_json
from .metrics import confidence_interval
from .store import RunStore

SMALL_META_TRAINING_SET = 1000  # images; the rules' "small meta-training set"
FAR = 2.0  # a nearest suite farther than this is weak evidence, and the advice says so
RULES = ("fewer than 5 shots: Prototypical Networks; small meta-training set (under 1,000 images): "
         "Relation Networks; else MAML; cross-domain: adapt with lp-ft")


@dataclass
class Setting:
    """A few-shot problem: N-way K-shot, a meta-training set of ``classes`` ×
    ``images_per_class`` (None: unknown, or no meta-training), tested in or across domains."""

    way: int
    shot: int
    classes: int | None = None
    images_per_class: float | None = None
    cross_domain: bool = False

    def __post_init__(self) -> None:
        for name in ("way", "shot", "classes", "images_per_class"):
            value = getattr(self, name)
            if value is not None and not value >= 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")

    @property
    def images(self) -> float | None:
        return self.classes * self.images_per_class if self.classes and self.images_per_class else None


def distance(a: Setting, b: Setting) -> float:
    """How far apart two settings are, for accuracy.

    One unit is a factor of two in way or in shot (accuracy moves most with those), a
    factor of 100 in meta-training classes or in images per class, or a change of
    domain (counted double). An unknown training size costs half a unit.
    """
    d = abs(math.log2(a.way / b.way)) + abs(math.log2(a.shot / b.shot)) + 2.0 * (a.cross_domain != b.cross_domain)
    for x, y in ((a.classes, b.classes), (a.images_per_class, b.images_per_class)):
        d += 0.5 * abs(math.log10(x / y)) if x and y else 0.5
    return d


@dataclass
class Evidence:
    """One evaluate record, placed at its setting."""

    record: int
    method: str
    strategy: str | None
    dataset: str
    suite: str
    setting: Setting
    accuracy: float
    ci95: float
    episodes: int
    distance: float = math.nan
    per_episode: list[float] | None = field(default=None, repr=False)
    transductive: bool = False

    @property
    def label(self) -> str:
        return f"{self.method}+{self.strategy}" if self.strategy else self.method


@dataclass
class Advice:
    """A recommendation, where it came from, and why."""

    method: str
    strategy: str | None
    expected_accuracy: float | None
    ci95: float | None
    source: str  # "records" or "rules"
    reasons: list[str]
    evidence: list[Evidence] = field(default_factory=list)
    setting: Setting | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for e in out["evidence"]:
            e.pop("per_episode", None)
        return out

    def text(self) -> str:
        strategy = f", adapted with {self.strategy}" if self.strategy else ""
        expected = (f"expected accuracy {self.expected_accuracy:.1f} ± {self.ci95:.1f} %"
                    if self.expected_accuracy is not None else "expected accuracy unknown")
        lines = [f"recommendation: {self.method}{strategy} ({expected})"]
        lines += [f"  {r}" for r in self.reasons]
        if self.evidence:
            lines.append("evidence (evaluate records of the run store):")
            for e in self.evidence:
                size = (f"{e.setting.classes} classes × {e.setting.images_per_class:.0f} images"
                        if e.setting.classes and e.setting.images_per_class else "no or unknown meta-training set")
                lines.append(f"  #{e.record:<4d} {e.label:22s} {e.accuracy:5.1f} ± {e.ci95:.1f} %  {e.suite}; "
                             f"trained on {size}{'; cross-domain' if e.setting.cross_domain else ''}")
        return "\n".join(lines)


# -- from records -------------------------------------------------------------------------

class _TrainingSets:
    """Meta-training set sizes (classes, mean images per class) of run configs, cached.

    Datasets are loaded offline: advice never downloads one, and a dataset that is not
    on this machine leaves the size unknown.
    """

    def __init__(self, data_root: str | Path | None):
        self.data_root, self.cache = data_root, {}

    def size(self, config: dict) -> tuple[int | None, float | None]:
        from .data import load_dataset

        key = (config.get("dataset"), json.dumps(config.get("dataset_options") or {}, sort_keys=True),
               config.get("train_split", "train"))
        if key not in self.cache:
            previous = os.environ.get("FEWSHOT_OFFLINE")
            os.environ["FEWSHOT_OFFLINE"] = "1"
            try:
                data = load_dataset(key[0], self.data_root, **json.loads(key[1]))
                counts = data.class_counts[data.split_classes(key[2])]
                self.cache[key] = (len(counts), float(np.mean(counts)))
            except (FewShotError, OSError):
                self.cache[key] = (None, None)
            finally:
                if previous is None:
                    os.environ.pop("FEWSHOT_OFFLINE", None)
                else:
                    os.environ["FEWSHOT_OFFLINE"] = previous
        return self.cache[key]


def _run_config(run_dir: str | None, train_configs: dict[str, dict]) -> dict | None:
    if not run_dir:
        return None
    path = Path(run_dir) / "config.json"
    try:
        return read_json(path)  # bounded: a recorded run folder may since hold anything
    except FewShotError:
        return train_configs.get(run_dir)


def collect_evidence(store: RunStore, data_root: str | Path | None = None) -> list[Evidence]:
    """Every classification evaluate record of ``store``, placed at its setting."""
    train_configs = {r["run_dir"]: r["config"] for r in store.list(kind="train") if r["run_dir"]}
    sizes = _TrainingSets(data_root)
    out = []
    for r in store.list(kind="evaluate"):
        m, c = r["metrics"], r["config"]
        accuracy = m.get("accuracy")
        if m.get("metric", "accuracy") != "accuracy" or accuracy is None or not math.isfinite(accuracy):
            continue  # regression suites say nothing about classification methods
        way, shot = c.get("way") or m.get("way"), c.get("shot") or m.get("shot")
        if not way or not shot:
            continue
        method, _, strategy = (r["method"] or "?").partition("+")
        if m.get("head"):  # a test-time head on the model's features (evaluate --head), not a transfer strategy
            strategy = f"head {m['head']}"
        config = _run_config(r["run_dir"], train_configs)
        classes = per_class = None
        cross = False
        if config:
            classes, per_class = sizes.size(config)
            cross = config.get("dataset") != r["dataset"]
        suite = (f"{r['dataset']}/{r['split']} {way}-way {shot}-shot, {m.get('episodes')} episodes "
                 f"(query {c.get('query')}, seed {r['seed']})")
        out.append(Evidence(r["id"], method, strategy or None, r["dataset"], suite,
                            Setting(int(way), int(shot), classes, per_class, cross), float(accuracy),
                            float(m.get("ci95") or math.nan), int(m.get("episodes") or 0),
                            per_episode=m.get("per_episode"), transductive=bool(m.get("transductive"))))
    return out


def _paired(a: Evidence, b: Evidence) -> tuple[float, float] | None:
    if a.per_episode and b.per_episode and len(a.per_episode) == len(b.per_episode):
        return confidence_interval(np.subtract(a.per_episode, b.per_episode))
    return None


def advise_from_records(setting: Setting, evidence: list[Evidence]) -> Advice | None:
    """The record-based advice (see the module docstring); None without records."""
    if not evidence:
        return None
    suites: dict[str, list[Evidence]] = defaultdict(list)
    for e in evidence:
        e.distance = distance(setting, e.setting)
        suites[e.suite].append(e)
    # The best record of each method on each suite: a method is as good as its best run.
    best: dict[str, list[Evidence]] = {}
    for suite, rows in suites.items():
        per_label: dict[str, Evidence] = {}
        for e in rows:
            if e.label not in per_label or e.accuracy > per_label[e.label].accuracy:
                per_label[e.label] = e
        best[suite] = sorted(per_label.values(), key=lambda e: -e.accuracy)
    # The nearest suite, unless one nearly as near compares more methods: a comparison
    # on identical episodes says more than one method's lone result.
    near = {s: min(e.distance for e in rows) for s, rows in best.items()}
    closest = min(near.values())
    nearest = min((s for s in best if near[s] <= closest + 0.5), key=lambda s: (-len(best[s]), near[s], s))
    rows = best[nearest]
    winner = rows[0]
    d = min(e.distance for e in rows)
    reasons = [f"on the nearest recorded setting ({winner.suite}; distance {d:.2f}), "
               f"{winner.label} had the highest accuracy of {len(rows)} method(s)"]
    if len(rows) > 1:
        runner = rows[1]
        paired = _paired(winner, runner)
        if paired:
            verdict = "a significant" if paired[0] > paired[1] else "not a significant"
            reasons.append(f"{winner.label} beat {runner.label} by {paired[0]:+.1f} ± {paired[1]:.1f} points on "
                           f"{winner.episodes} identical episodes ({verdict} difference)")
        else:
            reasons.append(f"{winner.label} beat {runner.label} by {winner.accuracy - runner.accuracy:+.1f} points")
        if winner.transductive != runner.transductive:
            which = winner.label if winner.transductive else runner.label
            reasons.append(f"{which} is transductive (it predicts each episode's queries together), the other is "
                           f"not: not a like-for-like comparison")
    compared = [s for s in best if len(best[s]) > 1 and any(e.label == winner.label for e in best[s])]
    if len(compared) > 1:
        wins = sum(best[s][0].label == winner.label for s in compared)
        reasons.append(f"{winner.label} was best on {wins} of the {len(compared)} recorded suites that compare it")
    if d > FAR:
        reasons.append(f"the nearest records are far from your setting (distance {d:.2f} > {FAR}): weak evidence; "
                       f"the documented rules would say {rules(setting).method}")
    return Advice(winner.method, winner.strategy, winner.accuracy, winner.ci95, "records", reasons, rows, setting)


# -- rules --------------------------------------------------------------------------------

def rules(setting: Setting) -> Advice:
    """The documented rules (see the module docstring)."""
    if setting.shot < 5:
        shots = "1 shot is" if setting.shot == 1 else f"{setting.shot} shots are"
        method, why = "protonet", f"{shots} fewer than 5: Prototypical Networks"
    elif setting.images is not None and setting.images < SMALL_META_TRAINING_SET:
        method, why = "relationnet", (f"a small meta-training set ({setting.images:.0f} images, under "
                                      f"{SMALL_META_TRAINING_SET:,}): Relation Networks")
    elif setting.images is None:
        method, why = "maml", "5 shots or more and a meta-training set of unknown size: MAML"
    else:
        method, why = "maml", f"5 shots or more and {setting.images:.0f} meta-training images: MAML"
    reasons = [why]
    strategy = None
    if setting.cross_domain:
        strategy = "lp-ft"
        reasons.append("cross-domain: fine-tune the backbone to the new domain at test time, linear probe first "
                       "(`fewshot evaluate RUN --adapt lp-ft`)")
    return Advice(method, strategy, None, None, "rules", reasons, [], setting)


def advise(setting: Setting, store: RunStore | None = None, *, data_root: str | Path | None = None) -> Advice:
    """Advice for ``setting``: from the records of ``store`` when it holds any, else by the rules."""
    evidence = collect_evidence(store, data_root) if store is not None else []
    advice = advise_from_records(setting, evidence)
    if advice is not None:
        return advice
    advice = rules(setting)
    why = "no records" if store is not None else "asked for the rules"
    advice.reasons.insert(0, f"{why}: using the documented rules ({RULES})")
    return advice
