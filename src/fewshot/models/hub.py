"""Hugging Face vision backbones as fewshot backbones (the optional extra ``fewshot[hub]``).

``fewshot zoo add NAME FOLDER`` takes a folder in the ``save_pretrained`` layout of
``transformers`` (``config.json``, ``model.safetensors``, optionally
``preprocessor_config.json``) holding any vision model ``AutoModel`` knows (ResNet, ViT,
ConvNeXt, DINOv2, ...). The model becomes a :class:`HubBackbone`: images in [0, 1] of the
zoo's input shape are normalised with the model's own mean and standard deviation and
turned into one feature vector each (``pooling="auto"``: the first token of a
transformer's last layer, as ViT's classifier reads it, and the pooled output of a
convolutional model, else its spatial mean). Its metadata comes from the model's config:
parameter count, feature width, input size (``preprocessor_config.json``, else the
config's ``image_size``, else 224), objective (``image-classification`` when the config
names a classification architecture, else ``feature-extraction``) and source (the
config's name and its number of labels).

**Safety.** Nothing here runs code from the folder or from zoo metadata: the config's
``model_type`` must be one ``transformers`` itself implements (``trust_remote_code`` is
never set and ``auto_map`` entries are refused), weights are read with safetensors only,
and nothing is downloaded unless the user asks ``load_hub_folder`` for a hub id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..io import read_json

#: The architecture name of Hugging Face backbones in pre-trained metadata.
HUB_ARCHITECTURE = "hf-transformers"
#: ImageNet statistics, the default of most vision models when the folder gives none.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_POOLINGS = ("auto", "pooler", "cls", "mean")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("Hugging Face backbones need the optional extra: pip install 'fewshot[hub]' "
                          "(it installs transformers)") from None
    return transformers


def _config(options: dict):
    """A transformers config from plain JSON, only for a model type transformers implements."""
    transformers = _transformers()
    if not isinstance(options, dict) or not isinstance(options.get("model_type"), str):
        raise ConfigError("a Hugging Face config must be a JSON object with a model_type")
    if options.get("auto_map"):
        raise ConfigError("the config names custom code (auto_map); fewshot loads only models transformers "
                          "implements itself")
    model_type = options["model_type"]
    if model_type not in transformers.CONFIG_MAPPING:
        raise ConfigError(f"transformers has no model type '{model_type[:60]}'")
    values = {k: v for k, v in options.items() if k not in ("model_type", "auto_map", "transformers_version")}
    return transformers.AutoConfig.for_model(model_type, **values)


class HubBackbone(nn.Module):
    """A transformers vision model giving one feature vector per image (see the module docstring)."""

    def __init__(self, model: nn.Module, image_shape: Sequence[int], mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, pooling: str = "auto"):
        super().__init__()
        if pooling not in _POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(_POOLINGS)}, got {pooling!r}")
        channels = int(image_shape[0])
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ConfigError(f"mean and std need {channels} values (std positive), got {list(mean)} and {list(std)}")
        self.model = model
        self.image_shape = [int(s) for s in image_shape]
        self.pooling = pooling
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=(x - self.mean) / self.std)
        pooled = getattr(out, "pooler_output", None)
        hidden = out.last_hidden_state
        # A transformer's pooler is a dense layer trained only by its pre-training head (and
        # absent from many checkpoints): "auto" reads the first token instead.
        if pooled is not None and (self.pooling == "pooler" or (self.pooling == "auto" and hidden.ndim == 4)):
            return pooled.flatten(1)
        if hidden.ndim == 4:  # convolutional: (N, C, H, W)
            return hidden.mean((2, 3))
        return hidden.mean(1) if self.pooling == "mean" else hidden[:, 0]

    def architecture(self) -> tuple[str, dict]:
        """``(name, options)`` that :func:`build_hub_backbone` rebuilds this network from."""
        config = {k: v for k, v in self.model.config.to_dict().items()
                  if k not in ("auto_map", "transformers_version", "_name_or_path", "architectures")}
        return HUB_ARCHITECTURE, {"config": config, "mean": self.mean.flatten().tolist(),
                                  "std": self.std.flatten().tolist(), "pooling": self.pooling}


def build_hub_backbone(image_shape: Sequence[int], config: dict | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD, pooling: str = "auto") -> HubBackbone:
    """The (randomly initialised) :class:`HubBackbone` that ``config`` describes; the weights come separately."""
    transformers = _transformers()
    model = transformers.AutoModel.from_config(_config(config or {}))
    return HubBackbone(model, image_shape, mean, std, pooling)


def _folder_facts(folder: Path) -> dict:
    """Input size and normalisation from a folder's ``preprocessor_config.json`` (empty if absent)."""
    path = folder / "preprocessor_config.json"
    if not path.exists():
        return {}
    pre = read_json(path)
    if not isinstance(pre, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    facts: dict[str, Any] = {}
    size = pre.get("crop_size") or pre.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    if isinstance(size, int):
        facts["side"] = size
    if pre.get("do_normalize", True) and pre.get("image_mean") and pre.get("image_std"):
        facts["mean"], facts["std"] = list(pre["image_mean"]), list(pre["image_std"])
    return facts


def load_hub_folder(folder: str | Path, image_shape: Sequence[int] | None = None) -> tuple[HubBackbone, dict]:
    """A ``save_pretrained`` folder as a :class:`HubBackbone` and the metadata its config gives."""
    transformers = _transformers()
    folder = Path(folder)
    config_path = folder / "config.json"
    raw = read_json(config_path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path} is not a JSON object")
    if not list(folder.glob("*.safetensors")):
        raise CheckpointError(f"{folder} has no .safetensors weights (fewshot never reads pickled .bin files); "
                              f"save the model with save_pretrained(..., safe_serialization=True)")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # no load reports or progress bars on the user's terminal
    transformers.utils.logging.disable_progress_bar()
    try:
        config = _config(raw)
        model = transformers.AutoModel.from_pretrained(str(folder), config=config, local_files_only=True,
                                                       trust_remote_code=False, use_safetensors=True)
    except ConfigError as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{folder} is not a loadable transformers model ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()
    facts = _folder_facts(folder)
    channels = int(raw.get("num_channels", 3))
    side = facts.get("side") or raw.get("image_size") or 224
    side = side[0] if isinstance(side, (list, tuple)) else side
    shape = list(image_shape) if image_shape is not None else [channels, int(side), int(side)]
    mean = facts.get("mean", list(IMAGENET_MEAN[:channels]) if channels == 3 else [0.5] * channels)
    std = facts.get("std", list(IMAGENET_STD[:channels]) if channels == 3 else [0.5] * channels)
    backbone = HubBackbone(model, shape, mean, std).eval()
    architectures = raw.get("architectures") or []
    classifies = any("ForImageClassification" in str(a) for a in architectures)
    labels = raw.get("id2label") or {}
    source = {"dataset": str(raw.get("_name_or_path") or folder.name), "hub_model_type": raw["model_type"]}
    if classifies and labels:
        source["num_classes"] = len(labels)
    meta = {"objective": "image-classification" if classifies else "feature-extraction", "source": source,
            "hub": {"model_type": raw["model_type"], "architectures": architectures, "folder": str(folder.resolve())}}
    return backbone, meta


__all__ = ["HUB_ARCHITECTURE", "HubBackbone", "IMAGENET_MEAN", "IMAGENET_STD", "build_hub_backbone",
           "load_hub_folder"]
