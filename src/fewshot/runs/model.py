"""The model a run describes: built from its config, loaded with its weights.

Shared by every form a trained model takes (a run folder, an exported model): the
method is built from fewshot's own registries by name, seeded by the config, checked on
a dry run, and its weights loaded and checked; :class:`Loaded` is what a loaded model
carries, whatever it was read from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..data.tasks import backbone_defaults, method_defaults, task_kind
from ..errors import CheckpointError, ConfigError, DataError, FewShotError
from ..images import Preprocessing
from ..methods import Method, build_method
from ..models import build_backbone
from ..models.backbones import feature_dim

#: ``TrainConfig.backbone`` of a run whose backbone is the user's own ``nn.Module``.
CUSTOM_BACKBONE = "custom"
#: The seed of a test suite's episodes: the same for every run, so their results compare.
TEST_SEED = 0
#: Test episodes of an evaluation, unless asked otherwise.
TEST_EPISODES = 600


def conv4_depth(image_shape: tuple[int, ...]) -> int:
    """Conv-4's default number of blocks for ``image_shape``: four from 16 pixels up (the
    standard model), fewer for small images (8x8 digits: two), so every block but the
    last halves a map of at least 2 pixels."""
    side = min(int(s) for s in image_shape[1:]) if len(image_shape) == 3 else 1
    if side >= 16:
        return 4
    return max(1, side.bit_length() - 2)


def describe_module(module: nn.Module) -> dict[str, str]:
    """How a run records a user's backbone: its class, for people (nothing is imported from it)."""
    kind = type(module)
    return {"class": f"{kind.__module__}.{kind.__qualname__}"}


def build_model(config: TrainConfig, image_shape: tuple[int, ...], classes: list[int] | None = None, *,
                backbone: nn.Module | None = None) -> Method:
    """The method a config describes, freshly initialised (seeded by ``config.seed``).

    ``classes`` (the training split's class ids) sizes whole-class heads (Baseline); a
    loaded run takes that size from its checkpoint instead. ``backbone`` is the user's
    own module for a run whose ``config.backbone`` is ``"custom"``. A backbone that
    cannot take inputs of ``image_shape`` (Conv-4's four poolings on 8x8 digits), or
    gives 4-D maps instead of ``(batch, features)``, is refused here, by a dry run,
    rather than half-way into training; the dry run also sizes every method's head.
    """
    torch.manual_seed(config.seed)
    if config.backbone == CUSTOM_BACKBONE:
        if backbone is None:
            kind = config.backbone_options.get("class", "an nn.Module")
            raise ConfigError(f"this run was trained with your own backbone ({kind}); pass that module again "
                              "(e.g. fewshot.load(path, backbone=MyNet()) or load_run(path, backbone=MyNet()))")
        name = type(backbone).__name__
    else:
        if backbone is not None:
            raise ConfigError(f"a backbone module was given, but the config names backbone '{config.backbone}'; "
                              f"a run of your own module has backbone '{CUSTOM_BACKBONE}'")
        options = {**backbone_defaults(config.dataset, config.backbone), **config.backbone_options}
        if config.backbone == "conv4" and len(image_shape) == 3:
            options.setdefault("depth", conv4_depth(image_shape))
        backbone, name = build_backbone(config.backbone, image_shape, **options), config.backbone
    try:
        feature_dim(backbone, image_shape)  # consumes no random numbers: initialisation is unchanged
    except FewShotError:
        raise
    except Exception as e:  # the forward pass itself failed on this input shape
        first = (str(e).splitlines() or [type(e).__name__])[0]
        fix = ("choose a shallower backbone (e.g. --backbone-option depth=2) or larger images (--image-size)"
               if name != type(backbone).__name__ else "make its first layer take this shape")
        raise ConfigError(f"backbone '{name}' cannot take {'x'.join(map(str, image_shape))} inputs "
                          f"({first}); {fix}") from None
    options = {**method_defaults(config.dataset), **config.method_options}  # an environment family's policy kind
    task = task_kind(config.dataset).name
    if options.pop("task", task) != task:
        raise ConfigError(f"method option task={config.method_options['task']} does not fit {config.dataset}, "
                          f"which is {task} data; leave the option out: the dataset decides")
    return build_method(config.method, backbone, image_shape=tuple(image_shape), way=config.train_shape[0],
                        classes=classes, task=task, **options)


def load_weights(method: Method, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load a checkpoint's ``model.*`` tensors into ``method``; a mismatch is a :class:`CheckpointError`."""
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    try:
        method.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise CheckpointError(f"{path} does not match the run's model ({first})") from None
    # NaN or infinite weights predict nothing; scored, they would pass for chance accuracy.
    broken = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if broken is not None:
        raise CheckpointError(f"{path} holds non-finite weights ({broken}); the run diverged or the file is damaged: "
                              "use other weights (--weights) or train again")


def build_checked(config: TrainConfig, image_shape: tuple[int, ...], tensors: dict[str, torch.Tensor], path: Path,
                  *, backbone: nn.Module | None = None) -> Method:
    """The model ``config`` describes with the weights ``tensors`` (read from ``path``) loaded.

    The model is first built on the ``meta`` device (no memory, no compute) and the
    file's tensors are compared with it, names, shapes and dtypes (int8 tensors where
    floats are expected are refused, never cast): a file whose description claims
    inputs or a backbone its weights do not fit fails here, in one line, before the
    real network is allocated (issue 34, cases 6 and 13). A user's own ``backbone``
    already exists, so it is checked by loading alone.
    """
    if backbone is None:
        with torch.device("meta"):
            planned = build_model(config, image_shape)
        check_tensors(planned, tensors, path)
    method = build_model(config, image_shape, backbone=backbone)
    load_weights(method, tensors, path)
    return method


def check_tensors(planned: Method, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse ``tensors`` whose names, shapes or dtypes do not fit ``planned`` (a model
    on the ``meta`` device: loading into it allocates nothing)."""
    weights = {k.removeprefix("model."): torch.empty(v.shape, dtype=v.dtype, device="meta")
               for k, v in tensors.items() if k.startswith("model.")}
    try:
        planned.load_state_dict(weights, strict=False)  # a head sized by its checkpoint resizes first
    except RuntimeError:
        pass  # shapes compared below; names are left to the real load
    for name, expected in planned.state_dict().items():
        if name not in weights:
            continue  # missing names: the real load says so
        if tuple(weights[name].shape) != tuple(expected.shape):
            raise CheckpointError(f"{path} does not match the model its description builds ({name}: "
                                  f"{tuple(weights[name].shape)} in the file, {tuple(expected.shape)} in the model)")
        found = weights[name].dtype
        if expected.is_floating_point() != found.is_floating_point or (
                not expected.is_floating_point() and found != expected.dtype):
            raise CheckpointError(f"{path}: tensor {name} is {str(found).removeprefix('torch.')} where the model "
                                  f"holds {str(expected.dtype).removeprefix('torch.')}; the file is damaged or "
                                  "was not written by fewshot")


def model_tensors(method: Method) -> dict[str, torch.Tensor]:
    """The weights of ``method`` as a checkpoint or an exported model holds them (``model.*``)."""
    return {f"model.{k}": v for k, v in method.state_dict().items()}


def preprocessing_from(values: Any, image_shape: Any) -> Preprocessing:
    """A model's recorded preprocessing, or (recorded before there was one) plain [0, 1]
    images of its input shape."""
    if isinstance(values, dict):
        return Preprocessing.from_dict(values)
    if not (isinstance(image_shape, (list, tuple)) and len(image_shape) == 3):
        raise DataError(f"the model records no usable input shape ({image_shape!r}); it is damaged")
    return Preprocessing(*(int(s) for s in image_shape))


@dataclass(frozen=True)
class Protocol:
    """The test episodes of an evaluation: ``way`` classes, ``shot`` support and ``query``
    query examples per class, ``episodes`` of them drawn with ``seed``. A run's own is
    its config's way, shot and query (:attr:`fewshot.runs.Run.protocol`)."""

    way: int
    shot: int
    query: int
    seed: int = TEST_SEED
    episodes: int = TEST_EPISODES

    @classmethod
    def of(cls, config: TrainConfig | None = None) -> "Protocol":
        """The protocol ``config`` tests with (no config: the defaults, 5-way 1-shot 15 queries)."""
        config = TrainConfig() if config is None else config
        return cls(config.way, config.shot, config.query)

    def given(self, **values: int | None) -> "Protocol":
        """This protocol with the values given (None: not given, so this one's); 0 or less
        is given, and refused by the sampler."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})


@dataclass
class Loaded:
    """A trained model as read from a run folder or an exported model: its config, its
    method with the weights loaded, what its inputs are, its probability calibration,
    the transfer strategy it was exported with (if any), where it came from, and (for a
    run folder) the run's state."""

    config: TrainConfig
    method: Method
    image_shape: list[int]
    #: The recorded preprocessing (None: recorded before there was one).
    preprocessing_record: dict | None
    calibration: dict | None
    source: dict
    weights_file: Path
    strategy: dict | None = None
    state: dict | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        """What images become for this model (only images have one: asked of a model of
        other inputs, it is a :class:`~fewshot.errors.DataError`)."""
        return preprocessing_from(self.preprocessing_record, self.image_shape)


__all__ = ["CUSTOM_BACKBONE", "Loaded", "Protocol", "TEST_EPISODES", "TEST_SEED", "build_model", "conv4_depth",
           "build_checked", "check_tensors", "describe_module", "load_weights", "model_tensors", "preprocessing_from"]
