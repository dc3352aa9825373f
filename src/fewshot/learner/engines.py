"""What a :class:`~fewshot.learner.FewShotClassifier` computes with, loaded from its ``model``.

Two kinds, one interface (``prepare`` inputs once, ``adapt`` on the support set, describe
and ship the weights):

* :class:`MethodEngine`: a trained method adapting on prepared images, as it was
  meta-trained to (a run folder or an exported model, optionally adapted with a transfer
  strategy such as LP-FT instead; a Hugging Face backbone with a strategy).
* :class:`FeatureEngine`: a frozen backbone's features and a feature head
  (:mod:`fewshot.heads`): a Hugging Face backbone (``hf:...``) or a run's backbone.
  Images are embedded through :func:`fewshot.features.embed`, so each image is run through
  the backbone once per cache, however many times it is fitted or predicted.

What a saved fitted model keeps beside its weights is the key :data:`LEARNER_KEY` of the
export description (see :func:`learner_record`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..calibration import test_copy
from ..errors import CheckpointError, ConfigError, DataError
from ..heads import Head, build_head
from ..images import to_tensor
from ..methods.base import Method
from ..models.hub import HUB_ARCHITECTURE, HubBackbone, build_hub_backbone
from ..models.hub_config import MAX_CHANNELS, MAX_SIDE, RESAMPLE_NAMES, HubPreprocessing

#: The export description's key for what a learner adds: its backbone (Hugging Face), head and fitted task.
LEARNER_KEY = "learner"
#: Queries predicted at once (the batch a train-mode method normalises together).
BATCH = 256
NOT_CALIBRATED = {"temperature": 1.0, "fitted": False,
                  "why": "a head on a backbone's features has no fitted temperature: probabilities are its softmax"}

Predictor = Callable[[torch.Tensor], torch.Tensor]


def image_items(X: Any, what: str) -> list:
    """``X`` as a list of single images for the feature path (one path or one image is refused)."""
    if isinstance(X, (str, Path)):
        raise DataError(f"{what}: expected a list of images, not one path ({X}); put it in a list")
    if isinstance(X, dict) or not hasattr(X, "__len__"):
        raise DataError(f"{what}: expected a list of images (paths, PIL images or arrays) or an array of images, "
                        f"got {type(X).__name__}")
    if hasattr(X, "ndim") and X.ndim < 3:
        raise DataError(f"{what}: an array of images is (n, h, w) or (n, h, w, c), got shape {tuple(X.shape)}; "
                        "a single image goes in a list")
    items = list(X)
    if not items:
        raise DataError(f"{what}: no images given")
    return items


class MethodEngine:
    """A trained method (or a transfer strategy) adapting on prepared images."""

    inputs = "images"
    transductive = False

    def __init__(self, method: Method, preprocessing: Any, device: torch.device, *, base: nn.Module | None = None,
                 config: Any = None, calibration: dict | None = None, source: dict | None = None,
                 strategy: dict | None = None):
        self.method, self.preprocessing, self.device = method.to(device), preprocessing, device
        self.base, self.config, self.source, self.strategy = base, config, source or {}, strategy
        self.calibration = calibration or {"temperature": 1.0, "fitted": False}
        self.head = None

    @property
    def name(self) -> str:
        return self.method.name + (f" + {self.strategy['name']}" if self.strategy else "")

    def prepare(self, X: Any, what: str, **_: Any) -> torch.Tensor:
        if hasattr(self.preprocessing, "prepare"):  # a Hugging Face model's own recipe
            return self.preprocessing.prepare(image_items(X, what))
        return to_tensor(X, self.preprocessing, what)

    def adapt(self, support: torch.Tensor, labels: torch.Tensor, way: int, query: torch.Tensor | None = None
              ) -> Predictor:
        model = test_copy(self.method)
        with torch.no_grad():  # methods whose adaptation needs gradients enable them themselves
            predictor = model.adapt(support.to(self.device), labels.to(self.device), way)

        def predict(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return torch.cat([predictor(x[i:i + BATCH].to(self.device)).float().cpu()
                                  for i in range(0, len(x), BATCH)])
        return predict

    def description(self) -> dict[str, Any]:
        if self.config is None or self.base is None:
            raise ConfigError(f"{self.name} adapts a Hugging Face backbone with a transfer strategy, which cannot be "
                              "saved; save a head learner instead (fewshot.load('hf:...', head='logistic'))")
        return {"config": self.config.to_dict(), "image_shape": list(self.preprocessing.image_shape),
                "preprocessing": self.preprocessing.to_dict(), "calibration": self.calibration,
                "strategy": self.strategy, "source": self.source}

    def weights(self) -> dict[str, torch.Tensor]:
        return self.base.state_dict()


class FeatureEngine:
    """A frozen backbone's features and a feature head; ``base`` describes where the backbone came from
    (a run's :class:`MethodEngine`, whose weights are saved, or None for a Hugging Face backbone)."""

    inputs = "features"

    def __init__(self, backbone: nn.Module, preprocessing: Any, head: Head, device: torch.device, *,
                 base: MethodEngine | None = None, hub: dict | None = None):
        self.backbone, self.preprocessing, self.head, self.device = backbone.to(device).eval(), preprocessing, head, device
        self.base, self.hub = base, hub
        self.calibration = dict(NOT_CALIBRATED)
        self.method = base.method if base is not None else None

    @property
    def transductive(self) -> bool:
        return bool(self.head.transductive)

    @property
    def name(self) -> str:
        return f"{self.hub['name'] if self.hub else self.base.name} + head {self.head.name}"

    @property
    def config(self):
        return self.base.config if self.base is not None else None

    @property
    def source(self) -> dict:
        return self.base.source if self.base is not None else self.hub.get("source") or {}

    def prepare(self, X: Any, what: str, *, cache: Any = None, batch_size: int = 64, progress: Any = False
                ) -> torch.Tensor:
        from ..features import embed

        return embed(self.backbone, image_items(X, what), self.preprocessing, cache=cache, batch_size=batch_size,
                     progress=progress)

    def adapt(self, support: torch.Tensor, labels: torch.Tensor, way: int, query: torch.Tensor | None = None
              ) -> Predictor:
        predictor = self.head.fit(support, labels, way, query if self.transductive else None)
        return lambda x: torch.cat([predictor(x[i:i + BATCH]).float() for i in range(0, len(x), BATCH)])

    def description(self) -> dict[str, Any]:
        if self.base is not None:
            return {**self.base.description(), "calibration": self.calibration}
        return {"image_shape": list(self.backbone.image_shape), "preprocessing": self.preprocessing.to_dict(),
                "calibration": self.calibration, "strategy": None, "source": self.hub.get("source") or {}}

    def weights(self) -> dict[str, torch.Tensor]:
        return self.base.weights() if self.base is not None else self.backbone.state_dict()

    def backbone_record(self) -> dict | None:
        """How a saved model rebuilds a Hugging Face backbone (None: the run's own config does)."""
        if self.base is not None:
            return None
        architecture, options = self.backbone.architecture()
        return {"architecture": architecture, "options": options, "image_shape": list(self.backbone.image_shape),
                "preprocessing": self.preprocessing.to_dict(), "name": self.hub["name"]}


def learner_record(engine: MethodEngine | FeatureEngine, fitted: dict | None) -> dict:
    """The description's :data:`LEARNER_KEY` entry::

        {"backbone": null | {"architecture": "hf-transformers", "options": {config, mean, std, pooling[, pooler]},
                             "image_shape": [c, h, w], "preprocessing": {HubPreprocessing fields}, "name": "hf:..."},
         "head": null | {"name": str, "options": {...}},
         "fitted": null | {"classes": [JSON labels, in column order], "inputs": "features" | "images",
                           "count": n, "tensors": {"support": "fitted.support", "labels": "fitted.labels"}}}

    ``backbone`` is null when the run's ``config`` rebuilds the backbone; ``head`` null for a
    method's own adaptation; ``fitted`` null before ``fit``. ``fitted.support`` holds the
    support set as the learner fits on it (its features for a head, prepared images for a
    method), ``fitted.labels`` the int64 class index of each (into ``classes``).
    """
    head = engine.head
    return {"backbone": engine.backbone_record() if isinstance(engine, FeatureEngine) else None,
            "head": None if head is None else {"name": head.name, "options": head.options()},
            "fitted": fitted}


def hub_preprocessing(values: Any) -> HubPreprocessing:
    """A saved :class:`HubPreprocessing` (its ``to_dict``), every field checked."""
    def bad(field: str, wanted: str) -> CheckpointError:
        return CheckpointError(f"saved model: backbone preprocessing field '{field}' must be {wanted}; the file is "
                               "damaged: export it again")

    def side(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE

    if not isinstance(values, dict):
        raise bad("preprocessing", "an object")
    channels = values.get("channels")
    if not (isinstance(channels, int) and 1 <= channels <= MAX_CHANNELS):
        raise bad("channels", f"an integer from 1 to {MAX_CHANNELS}")
    resize = values.get("resize")
    if resize is not None and not (isinstance(resize, list) and (
            (len(resize) == 3 and resize[0] == "exact" and side(resize[1]) and side(resize[2]))
            or (len(resize) == 2 and resize[0] == "shortest" and side(resize[1])))):
        raise bad("resize", "null, [\"exact\", h, w] or [\"shortest\", s]")
    crop = values.get("crop")
    if crop is not None and not (isinstance(crop, list) and len(crop) == 2 and all(map(side, crop))):
        raise bad("crop", "null or [h, w]")
    if values.get("resample") not in RESAMPLE_NAMES:
        raise bad("resample", "a Pillow filter number 0-5")
    numbers = {}
    for field, count in (("rescale", None), ("mean", channels), ("std", channels)):
        v = values.get(field)
        items = [v] if count is None else v
        if not (isinstance(items, list) and len(items) == (count or 1) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) < 1e9 for x in items)):
            raise bad(field, f"{count or 1} finite number(s)")
        numbers[field] = float(v) if count is None else tuple(float(x) for x in v)
    return HubPreprocessing(tuple(resize) if resize else None, tuple(crop) if crop else None, int(values["resample"]),
                            numbers["rescale"], numbers["mean"], numbers["std"], channels)


def hub_backbone(record: Any, weights: dict[str, torch.Tensor], label: str) -> tuple[HubBackbone, HubPreprocessing]:
    """The Hugging Face backbone and preprocessing a saved learner records, its weights loaded and checked."""
    if not (isinstance(record, dict) and record.get("architecture") == HUB_ARCHITECTURE
            and isinstance(record.get("options"), dict) and isinstance(record.get("image_shape"), list)):
        raise CheckpointError(f"{label}: its '{LEARNER_KEY}.backbone' is not a Hugging Face backbone record; "
                              "export it again")
    prep = hub_preprocessing(record.get("preprocessing"))
    shape = record["image_shape"]
    if not (len(shape) == 3 and all(isinstance(s, int) and 1 <= s <= MAX_SIDE for s in shape)):
        raise CheckpointError(f"{label}: backbone image_shape {shape!r} is not [c, h, w]")
    options = {k: v for k, v in record["options"].items() if k in ("config", "mean", "std", "pooling", "pooler")}
    try:
        backbone = build_hub_backbone(shape, **options)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{label}: its backbone record cannot be built ({e})") from None
    state = {k.removeprefix("model."): v for k, v in weights.items()}
    try:
        backbone.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{label}: its weights do not match its backbone "
                              f"({(str(e).splitlines() or ['mismatch'])[0]})") from None
    return backbone.eval(), prep


def build_feature_head(name: str, options: dict | None) -> Head:
    """The head ``name`` (:func:`fewshot.heads.build_head`) with ``options``."""
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"head_options must be a dict of the head's options, got {type(options).__name__}")
    return build_head(name, **(options or {}))


__all__ = ["BATCH", "FeatureEngine", "LEARNER_KEY", "MethodEngine", "build_feature_head", "hub_backbone",
           "hub_preprocessing", "image_items", "learner_record"]
