"""Training configuration, in layers: defaults < a JSON config file < command-line flags."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


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
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"config 'momentum' must be in [0, 1), got {self.momentum}")
        if self.optimizer not in ("adam", "sgd", "rmsprop"):
            raise ConfigError(f"config 'optimizer' must be 'adam', 'sgd' or 'rmsprop', got '{self.optimizer}'")

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
            try:
                values = json.loads(Path(config_file).read_text())
            except FileNotFoundError:
                raise ConfigError(f"config file {config_file} not found") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"config file {config_file} is not valid JSON: {e}") from None
            except OSError as e:
                raise ConfigError(f"config file {config_file} cannot be read ({e.strerror or e})") from None
            if not isinstance(values, dict):
                raise ConfigError(f"config file {config_file} must hold a JSON object of settings")
        for key, value in overrides.items():
            if value is None:
                continue
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                value = {**values[key], **value}
            values[key] = value
        return cls.from_dict(values)
