"""Training configuration, in layers: defaults < a JSON config file < command-line flags."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from numbers import Integral
from typing import Any

from .errors import ConfigError
from .io import read_json

#: A config file is a few hundred bytes; anything past a megabyte is not one.
MAX_CONFIG_BYTES = 1 << 20
#: Seeds fit every generator fewshot seeds (torch, NumPy, Python's random) and leave room for offsets.
MAX_SEED = 2**31 - 1


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
    ``θ ← θ + ε (φ̃ − θ)``.
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

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "str": str, "dict": dict}
            kind = str(f.type).replace(" | None", "")
            if value is None and "None" in str(f.type):
                continue
            if kind in expected and (not isinstance(value, expected[kind]) or isinstance(value, bool)):
                raise ConfigError(f"config '{f.name}' must be {kind}, got {value!r}")
            if kind == "float" and not math.isfinite(value):
                raise ConfigError(f"config '{f.name}' must be a finite number, got {value!r}")
        positive = ("way", "shot", "query", "episodes", "meta_batch", "val_every", "val_episodes", "checkpoint_every")
        for name in positive + ("train_way", "train_shot", "train_query"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"config '{name}' must be at least 1, got {value}")
        if not self.lr > 0:
            raise ConfigError(f"config 'lr' must be positive, got {self.lr}")
        check_seed(self.seed, "config 'seed'")
        if self.weight_decay < 0:
            raise ConfigError(f"config 'weight_decay' must be 0 or more, got {self.weight_decay}")
        if self.lr_step < 0:
            raise ConfigError(f"config 'lr_step' must be 0 (never decay) or a number of steps, got {self.lr_step}")
        # A factor above 1 grows the learning rate without bound; 0 or less stops or reverses training.
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"config 'lr_gamma' must be in (0, 1], got {self.lr_gamma}")
        if self.cpu_minutes is not None and not self.cpu_minutes > 0:
            raise ConfigError(f"config 'cpu_minutes' must be positive (or left out: no budget), got {self.cpu_minutes}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"config 'momentum' must be in [0, 1), got {self.momentum}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"config 'optimizer' must be 'adam' or 'sgd', got '{self.optimizer}'")

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
    def layered(cls, config_file: str | Path | None = None, **overrides: Any) -> "TrainConfig":
        """Defaults, then ``config_file`` (JSON), then ``overrides`` that are not None."""
        values: dict[str, Any] = {}
        if config_file:
            if not Path(config_file).exists():
                raise ConfigError(f"config file {config_file} not found")
            values = read_json(config_file, ConfigError, limit=MAX_CONFIG_BYTES)
            if not isinstance(values, dict):
                raise ConfigError(f"config file {config_file} must hold a JSON object of settings")
        for key, value in overrides.items():
            if value is None:
                continue
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                value = {**values[key], **value}
            values[key] = value
        return cls.from_dict(values)


def check_seed(seed: object, what: str = "seed") -> int:
    """``seed`` if it is an integer in [0, :data:`MAX_SEED`], else a :class:`ConfigError`."""
    if not isinstance(seed, Integral) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{what} must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    return seed
