"""Training configuration, in layers: defaults < a JSON config file < command-line flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .io import read_json
from .params import EPISODES, STEPS, Boolean, Integer, OneOf, Optional, Real, Settings, Text, validate

#: A config file is a few hundred bytes; anything past a megabyte is not one.
MAX_CONFIG_BYTES = 1 << 20
#: Seeds fit every generator fewshot seeds (torch, NumPy, Python's random) and leave room for offsets.
MAX_SEED = 2**31 - 1

#: How a run computes (:mod:`fewshot.devices`): float32 unless a run asks for autocast.
DEFAULT_PRECISION = "fp32"
PRECISIONS = (DEFAULT_PRECISION, "bf16", "fp16")
#: Settings of how a run computes, not of what it learns: a resumed run may change them.
RUNTIME = ("device", "precision", "tf32", "deterministic")
_COUNT = Integer(low=1)
#: What each setting may hold (checked once, when a config is made).
CONSTRAINTS = {
    "method": Text(), "method_options": Settings(), "backbone": Text(), "backbone_options": Settings(),
    "dataset": Text(), "dataset_options": Settings(), "train_split": Text(), "val_split": Optional(Text()),
    "way": _COUNT, "shot": _COUNT, "query": _COUNT, "train_way": Optional(_COUNT), "train_shot": Optional(_COUNT),
    "train_query": Optional(_COUNT), "episodes": _COUNT, "meta_batch": _COUNT, "optimizer": OneOf("adam", "sgd", "rmsprop"),
    "lr": Real(low=0, open_low=True), "momentum": Real(low=0, high=1, open_high=True), "weight_decay": Real(low=0),
    # lr_step 0: never decay; a factor above 1 would grow the rate without bound, 0 or less stop or reverse it.
    "lr_step": Integer(low=0), "lr_gamma": Real(low=0, open_low=True, high=1), "val_every": _COUNT,
    "val_episodes": EPISODES, "checkpoint_every": _COUNT, "seed": Integer(low=0, high=MAX_SEED),
    "cpu_minutes": Optional(Real(low=0, open_low=True)),
    "lr_schedule": OneOf("step", "cosine"), "lr_min": Real(low=0), "augment": OneOf("none", "shift", "affine"),
    "device": Text(), "precision": OneOf(*PRECISIONS), "tf32": Boolean(), "deterministic": Boolean(),
}
#: Step counts among the method options, bounded by :data:`fewshot.params.MAX_STEPS`: a
#: run's or an exported model's config names the compute that adapting to a task costs.
STEP_OPTIONS = {name: Optional(STEPS) for name in ("inner_steps", "test_inner_steps", "steps", "probe_steps")}

#: Per-dataset training recipes: the layer between the defaults and a config file, so
#: ``fewshot train METHOD --dataset NAME`` works as it is on every built-in dataset.
#: digits (8x8, 5 training digits): their rotations as 20 training classes, 20-way
#: training episodes, validated once, at the end, on the rotated test digits (see
#: fewshot.data.digits): validating every 250 steps, the accuracy stayed within its
#: interval (78.8-80.0 ± 1.4 %) and the checkpoint it picked (step 750) tested no better
#: than the last (71.9 against 72.1 %), so the last weights ship. Measured in
#: benchmarks/results/demo_digits.txt.
RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"dataset_options": {"rotations": True}, "train_way": 20, "train_query": 10, "episodes": 1500,
               "lr_step": 1000, "val_every": 1500},
}


@dataclass
class TrainConfig:
    """Everything that defines a meta-training run; saved as ``config.json`` in the run.

    ``train_way`` / ``train_shot`` / ``train_query`` default to the test-time ``way`` /
    ``shot`` / ``query``. ``episodes`` counts meta-training steps, each over
    ``meta_batch`` episodes. ``lr_step`` > 0 multiplies the learning rate by
    ``lr_gamma`` every ``lr_step`` steps (Snell et al. halve it every 2,000).
    ``cpu_minutes`` stops training (validated and checkpointed) once the process has
    spent that much CPU time, counted across resumes. ``momentum`` is that of the outer
    SGD (``optimizer="sgd"``); 0 makes Reptile's outer step exactly Nichol et al.'s
    ``θ ← θ + ε (φ̃ − θ)``. ``optimizer="rmsprop"`` is RMSprop with that momentum and a
    squared-gradient decay of 0.95 (Santoro et al.'s MANN, after Graves, 2013).

    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), ``precision``
    (``fp32``, ``bf16``, ``fp16``), ``tf32`` and ``deterministic`` say how a run
    computes, not what it learns (:mod:`fewshot.runtime`): they are the
    :data:`RUNTIME` settings, which a resumed run may change. ``device`` is a request
    (``auto`` is decided when the run starts, by the task kind's rule).
    """

    method: str = "protonet"
    method_options: dict = field(default_factory=dict)
    backbone: str = "conv4"
    backbone_options: dict = field(default_factory=dict)
    dataset: str = "digits"
    dataset_options: dict = field(default_factory=dict)
    train_split: str = "train"
    val_split: str | None = "val"
    way: int = 5
    shot: int = 1
    query: int = 15
    train_way: int | None = None
    train_shot: int | None = None
    train_query: int | None = None
    episodes: int = 2000
    meta_batch: int = 1
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 0
    lr_gamma: float = 0.5
    val_every: int = 500
    val_episodes: int = 200
    checkpoint_every: int = 100
    seed: int = 0
    cpu_minutes: float | None = None
    # Outer-rate schedule: "step" (lr_step/lr_gamma above) or "cosine", from lr down to
    # lr_min over `episodes` steps (MAML++'s annealing, Antoniou et al. 2019, arXiv:1810.09502).
    lr_schedule: str = "step"
    lr_min: float = 0.0
    # Training episodes' images changed at random, seeded by the step (fewshot.data.augment):
    # "shift" (whole-pixel translations) or "affine" (Koch et al. 2015's distortions);
    # validation and test episodes never are.
    augment: str = "none"
    device: str = "auto"
    precision: str = DEFAULT_PRECISION
    tf32: bool = True
    deterministic: bool = False

    def __post_init__(self) -> None:
        validate("config", self.to_dict(), CONSTRAINTS)
        validate("config method option", self.method_options, STEP_OPTIONS)
        if self.lr_min > self.lr:
            raise ConfigError(f"config 'lr_min' must be at most lr ({self.lr}), got {self.lr_min}")

    def same_run(self, other: "TrainConfig") -> bool:
        """Whether ``other`` describes the same run, whatever device or precision computes it."""
        mine, theirs = self.to_dict(), other.to_dict()
        for name in RUNTIME:
            mine.pop(name), theirs.pop(name)
        return mine == theirs

    @property
    def train_shape(self) -> tuple[int, int, int]:
        """(way, shot, query) of training episodes."""
        return (self.train_way or self.way, self.train_shot or self.shot, self.train_query or self.query)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a JSON object of settings, got a {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(names))}")
        return cls(**values)

    @classmethod
    def for_dataset(cls, dataset: str = "digits", **settings: Any) -> "TrainConfig":
        """Defaults, then the dataset's recipe (:data:`RECIPES`), then ``settings``."""
        return cls.layered(None, dataset=dataset, **settings)

    @classmethod
    def layered(cls, config_file: str | Path | None = None, **overrides: Any) -> "TrainConfig":
        """Defaults, then the dataset's recipe (:data:`RECIPES`), then ``config_file``
        (JSON), then ``overrides`` that are not None."""
        values: dict[str, Any] = {}
        if config_file:
            if not Path(config_file).exists():
                raise ConfigError(f"config file {config_file} not found")
            values = read_json(config_file, ConfigError, limit=MAX_CONFIG_BYTES)
            if not isinstance(values, dict):
                raise ConfigError(f"config file {config_file} must hold a JSON object of settings")
        dataset = overrides.get("dataset") or values.get("dataset") or cls.dataset
        # A styled domain (digits:blur, fewshot.data.styles) trains with its dataset's recipe.
        recipe = RECIPES.get(dataset.split(":")[0], {}) if isinstance(dataset, str) and "," not in dataset else {}
        for key, value in recipe.items():
            values[key] = {**value, **values[key]} if isinstance(values.get(key), dict) else values.get(key, value)
        for key, value in overrides.items():
            if value is None:
                continue
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                value = {**values[key], **value}
            values[key] = value
        return cls.from_dict(values)
