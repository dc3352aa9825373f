"""The meta-learner that ships with fewshot, so ``fewshot select`` ranks any zoo without a build.

``python benchmarks/ship_selector.py`` trains it on the committed meta-dataset
(``benchmarks/results/model_selection_meta.csv.gz``) and writes
``shipped_selector.safetensors`` next to this module: parameters as data, never a pickle.
The file holds, for each adaptation target (:data:`~.measure.TARGETS`), a ranking
:class:`~.metalearner.MetaLearner`'s trees (:mod:`.trees`) and, in its header's JSON, its
columns, where it came from (the meta-dataset's SHA-256, tasks, models, groups), the range of
every task and model meta-feature it saw, and a 90 % prediction interval for models and task
groups it never saw (:func:`~.uncertainty.unseen_model_intervals`). :func:`load_shipped`
reads it within bounds and checks every part before use; any problem is one CheckpointError.

**Portable features only.** A user's zoo holds other models than the reference zoo the
meta-dataset was built on, and a user's task folder has no known source dataset. So the
shipped learner leaves out the columns that name the reference zoo's catalogue (one-hot
architecture, training objective, source dataset, and the task's dataset):
:func:`portable_columns`. What it keeps is computable for any zoo entry, Hugging Face
folders included: task statistics, model size, feature width, source classes (0 for a model
without a head over its source classes), whether it was trained, and the transferability
scores (LEEP and NCE only for models with such a head, missing otherwise, as in training).
Values outside the ranges seen in training are reported (:meth:`ShippedSelector.outside`):
there the trees extrapolate flat and the interval is not a guarantee.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..io import parse_json, read_bounded, save_tensors
from .measure import TARGETS
from .metalearner import MetaLearner
from .table import check_rows, feature_columns, feature_matrix
from .uncertainty import unseen_model_intervals

SHIPPED = Path(__file__).with_name("shipped_selector.safetensors")
FORMAT, VERSION = "fewshot-shipped-selector", 1
MAX_BYTES = 32 << 20  # the shipped file is about 2 MB
#: Column prefixes that name the reference zoo's catalogue rather than a property every model
#: and task folder has.
CATALOGUE = ("task.domain.", "model.objective.", "model.arch.", "model.source.")
#: The columns whose training ranges are checked (scores vary by task; their per-task ranks
#: are what the learner reads).
RANGED = ("task.", "model.")


def portable_columns(columns: Iterable[str]) -> list[str]:
    """The columns of ``columns`` that any zoo entry and task folder have (see the module docstring)."""
    return [c for c in columns if not c.startswith(CATALOGUE)]


@dataclass
class ShippedSelector:
    """The shipped learners (one per target), their intervals, training ranges and provenance."""

    learners: dict[str, MetaLearner]
    intervals: dict[str, dict]
    ranges: dict[str, dict[str, list[float]]]
    trained_on: dict
    path: Path | None = None

    def learner(self, target: str) -> MetaLearner:
        if target not in self.learners:
            raise ConfigError(f"the shipped meta-learner has no '{target}' target (it has "
                              f"{', '.join(self.learners)}); build your own with `fewshot select build`")
        return self.learners[target]

    def describe(self) -> str:
        t = self.trained_on
        return (f"the shipped meta-learner (trained on {t['tasks']} tasks × {len(t['models'])} models of "
                f"fewshot's reference zoo, {len(t['groups'])} task groups)")

    def outside(self, rows: Sequence[dict], target: str) -> list[list[str]]:
        """For each row, the task and model columns whose value lies outside the range seen in training."""
        ranges = self.ranges[target]
        columns = sorted(ranges)
        x = feature_matrix(rows, columns)
        low, high = (np.array([ranges[c][k] for c in columns]) for k in (0, 1))
        out = ~np.isnan(x) & ((x < low) | (x > high))
        return [[c for c, o in zip(columns, row) if o] for row in out]


def train_shipped(rows_by_target: Mapping[str, Sequence[dict]], trained_on: dict, *,
                  related: Mapping[str, Iterable[str]] | None = None, model_folds: int = 3,
                  seed: int = 0) -> ShippedSelector:
    """Fit the shipped learners on a meta-dataset's rows (one list per target) and their
    unseen-model intervals; ``trained_on`` describes the meta-dataset (file, sha256)."""
    learners, intervals, ranges = {}, {}, {}
    for target, rows in rows_by_target.items():
        if target not in TARGETS:
            raise ConfigError(f"unknown adaptation '{target}'; choose among {', '.join(TARGETS)}")
        check_rows(rows, need_accuracy=True)
        columns = portable_columns(feature_columns(rows))
        learners[target] = MetaLearner("ranking", features=columns, seed=seed).fit(rows)
        intervals[target] = unseen_model_intervals(
            rows, lambda: MetaLearner("regression", features=columns, seed=seed), related, model_folds)
        ranged = [c for c in columns if c.startswith(RANGED)]
        x = feature_matrix(rows, ranged)
        ranges[target] = {c: [float(np.nanmin(x[:, j])), float(np.nanmax(x[:, j]))]
                          for j, c in enumerate(ranged) if not np.isnan(x[:, j]).all()}
    first = next(iter(rows_by_target.values()))
    described = {**trained_on, "rows": len(first), "tasks": len({r["task"] for r in first}),
                 "models": sorted({r["model"] for r in first}), "groups": sorted({r["group"] for r in first})}
    return ShippedSelector(learners, intervals, ranges, described)


def save_shipped(selector: ShippedSelector, path: str | Path = SHIPPED) -> None:
    """Write ``selector`` as one safetensors file: the trees as tensors, the rest as header JSON."""
    import torch

    header = {"format": FORMAT, "version": VERSION, "trained_on": selector.trained_on, "targets": {}}
    tensors = {}
    for target, learner in selector.learners.items():
        info, arrays = learner.state()
        header["targets"][target] = {"learner": info, "intervals": selector.intervals[target],
                                     "ranges": selector.ranges[target]}
        tensors.update({f"{target}/{name}": torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()})
    save_tensors(path, tensors, metadata={"fewshot": json.dumps(header, sort_keys=True)})


def load_shipped(path: str | Path | None = None) -> ShippedSelector:
    """The selector :func:`save_shipped` wrote (default: :data:`SHIPPED`), read within bounds
    and checked; any problem is one CheckpointError saying what is wrong."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path) if path is not None else SHIPPED
    remedy = "reinstall fewshot, or build your own meta-learner with `fewshot select build`"
    data = read_bounded(path, MAX_BYTES, CheckpointError)
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < size <= len(data) - 8:
        raise CheckpointError(f"{path} is not a safetensors file (its header length is wrong); {remedy}")
    head = parse_json(data[8:8 + size], f"{path}: its header", CheckpointError, finite=True)
    meta = head.get("__metadata__") if isinstance(head, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("fewshot"), str):
        raise CheckpointError(f"{path} is not a shipped meta-learner (no fewshot header); {remedy}")
    header = parse_json(meta["fewshot"], f"{path}: its fewshot header", CheckpointError, finite=True)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a shipped meta-learner (its header's format is not {FORMAT}); {remedy}")
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path} is a shipped meta-learner of version {str(header.get('version'))[:20]}; this "
                              f"fewshot reads version {VERSION}; {remedy}")
    try:
        arrays = load(data)
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); {remedy}") from None
    targets, trained_on = header.get("targets"), header.get("trained_on")
    if not isinstance(targets, dict) or not targets or not set(targets) <= set(TARGETS):
        raise CheckpointError(f"{path}: its targets must be some of {', '.join(TARGETS)}; {remedy}")
    if not (isinstance(trained_on, dict) and all(isinstance(trained_on.get(k), int) for k in ("rows", "tasks"))
            and all(isinstance(trained_on.get(k), list) for k in ("models", "groups"))):
        raise CheckpointError(f"{path}: it does not say what it was trained on; {remedy}")
    learners, intervals, ranges = {}, {}, {}
    for target, part in targets.items():
        what = f"{path}, target {target}"
        if not isinstance(part, dict):
            raise CheckpointError(f"{what}: not a JSON object; {remedy}")
        own = {name.split("/", 1)[1]: a for name, a in arrays.items() if name.startswith(f"{target}/")}
        learners[target] = MetaLearner.from_state(part.get("learner"), own, what)
        intervals[target] = _check_interval(part.get("intervals"), what)
        ranges[target] = _check_ranges(part.get("ranges"), learners[target].base_columns_, what)
    return ShippedSelector(learners, intervals, ranges, trained_on, path)


def _check_interval(interval, what: str) -> dict:
    keys = ("rmse", "low", "high", "coverage")
    if not isinstance(interval, dict) or not all(isinstance(interval.get(k), (int, float))
                                                 and math.isfinite(interval[k]) for k in keys):
        raise CheckpointError(f"{what}: its interval needs finite {', '.join(keys)}")
    if not (interval["rmse"] >= 0 and interval["low"] <= interval["high"] and 0 < interval["coverage"] < 1):
        raise CheckpointError(f"{what}: its interval is inconsistent (rmse < 0, low > high or coverage outside 0-1)")
    return interval


def _check_ranges(ranges, columns: Sequence[str], what: str) -> dict:
    if not isinstance(ranges, dict) or not set(ranges) <= set(columns) or not all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(b, (int, float)) for b in v) and v[0] <= v[1]
            for v in ranges.values()):
        raise CheckpointError(f"{what}: its ranges must map its own columns to [low, high]")
    return ranges


__all__ = ["CATALOGUE", "FORMAT", "SHIPPED", "ShippedSelector", "VERSION", "load_shipped", "portable_columns",
           "save_shipped", "train_shipped"]
