"""The declared schema of an exported model's description, checked when it is read.

One place says what each field of the description may hold (types, ranges, finite
numbers), with the constraint classes of :mod:`fewshot.params`; :func:`check_description`
checks a description against it and refuses the first field that breaks it in one
line naming the file and the field (``calibration.temperature``), before anything
is built from it (issue 34, cases 5, 13 and 17). The weights are checked against the
model they must fit by :func:`fewshot.runs.model.build_checked`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import CheckpointError
from ..models.pretrained import MAX_IMAGE_SIDE, MAX_INPUT
from ..params import Boolean, Constraint, Integer, ListOf, Optional, Real, Settings, Text

#: The most classes a fitted head may name (a few-shot task has a handful; ImageNet 1,000).
MAX_CLASSES = 10_000


@dataclass(frozen=True)
class Record(Constraint):
    """A JSON object whose named ``fields`` are checked in turn (others are free); those
    named in ``required`` must be there."""

    fields: Mapping[str, Constraint]
    required: tuple[str, ...] = ()

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)

    def describe(self) -> str:
        return "an object"


@dataclass(frozen=True)
class Shape(Constraint):
    """An input shape: 1 to 4 positive integers, each at most :data:`MAX_IMAGE_SIDE`,
    :data:`MAX_INPUT` values in all (so one input of it cannot ask for gigabytes)."""

    def accepts(self, value: Any) -> bool:
        return (ListOf(Integer(1, MAX_IMAGE_SIDE), 1, 4).accepts(value) and math.prod(value) <= MAX_INPUT)

    def describe(self) -> str:
        return (f"a list of 1 to 4 positive integers, each at most {MAX_IMAGE_SIDE}, at most {MAX_INPUT:,} values "
                "in all")


@dataclass(frozen=True)
class Scalar(Constraint):
    """A class label: a string, an integer, a finite number or a boolean."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (str, int, bool)) or (isinstance(value, float) and math.isfinite(value))

    def describe(self) -> str:
        return "a string or a number"


SIDE = Integer(1, MAX_IMAGE_SIDE)
#: What an exported model's description holds (the keys fewshot writes; others are free).
DESCRIPTION = Record({
    "format": Text(),
    "format_version": Integer(1),
    "config": Settings(),  # checked by TrainConfig itself
    "image_shape": Optional(Shape()),
    "preprocessing": Optional(Record({"channels": SIDE, "height": SIDE, "width": SIDE,
                                      "value_range": Optional(ListOf(Real(), 2, 2))},
                                     required=("channels", "height", "width"))),
    "calibration": Optional(Record({"temperature": Real(low=0.0, open_low=True), "fitted": Optional(Boolean()),
                                    "episodes": Optional(Integer(0)), "strategy": Optional(Settings())},
                                   required=("temperature",))),
    # The strategy's options (steps bounded by MAX_STEPS, ...) are checked by the strategy itself.
    "strategy": Optional(Record({"name": Text(), "options": Optional(Settings())}, required=("name",))),
    "source": Optional(Settings()),
    # A head fitted on a task (``fit`` then ``save``): its tensors are ``head.*`` in the weights.
    "fitted": Optional(Record({"head": Text(), "head_options": Settings(),
                               "classes": ListOf(Scalar(), 1, MAX_CLASSES)},
                              required=("head", "head_options", "classes"))),
    # A learner's backbone, head and fitted support set (fewshot.learner); a Hugging Face
    # backbone's export has no training config, its ``learner.backbone`` describes it.
    "learner": Optional(Settings()),
}, required=("format", "format_version"))
#: The same for a learner over a Hugging Face backbone: its preprocessing is the model's own
#: image processor's recipe, checked by :mod:`fewshot.models.hub_config` when it is rebuilt.
HUB_DESCRIPTION = Record({**DESCRIPTION.fields, "preprocessing": Optional(Settings())}, required=DESCRIPTION.required)


def problem(value: Any, constraint: Constraint, field: str = "") -> str | None:
    """What is wrong with ``value`` under ``constraint`` (the field named, dotted), or None."""
    inner = constraint.inner if isinstance(constraint, Optional) else constraint
    if value is None and inner is not constraint:
        return None
    if not constraint.accepts(value):
        where = f"field '{field}'" if field else "the description"
        return f"{where} must be {constraint.describe()}, got {_show(value)}"
    if isinstance(inner, Record):
        missing = [name for name in inner.required if name not in value]
        if missing:
            return f"{'field ' + repr(field) if field else 'the description'} lacks '{missing[0]}'"
        for name, sub in inner.fields.items():
            if name in value:
                found = problem(value[name], sub, f"{field}.{name}" if field else name)
                if found:
                    return found
    return None


def check_description(description: Any, label: str) -> dict[str, Any]:
    """``description`` if it fits :data:`DESCRIPTION`, else a one-line CheckpointError
    naming ``label`` (the file) and the field."""
    learner = description.get("learner") if isinstance(description, dict) else None
    hub = isinstance(learner, dict) and isinstance(learner.get("backbone"), dict)
    found = problem(description, HUB_DESCRIPTION if hub else DESCRIPTION)
    if found is None and "config" not in description and not hub:
        found = "the description lacks 'config'"  # only a learner over a described backbone has none
    prep = description.get("preprocessing") if found is None and not hub else None
    if isinstance(prep, dict) and not Shape().accepts([prep["channels"], prep["height"], prep["width"]]):
        found = f"field 'preprocessing' must describe inputs of {Shape().describe()}"
    if found:
        raise CheckpointError(f"{label}: {found}; the exported model is damaged or was edited: export it again")
    return description


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["DESCRIPTION", "HUB_DESCRIPTION", "MAX_CLASSES", "Record", "Scalar", "Shape", "check_description", "problem"]
