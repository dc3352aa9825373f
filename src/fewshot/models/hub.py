"""Hugging Face vision backbones as fewshot backbones (the optional extra ``fewshot[hub]``).

:func:`load_backbone` takes ``hf:<folder or hub id>``: a folder in the ``save_pretrained``
layout of ``transformers`` (``config.json``, ``*.safetensors``, optionally
``preprocessor_config.json``) or a hub id such as ``facebook/dinov2-small``, holding any
vision model ``transformers`` implements (ResNet, ConvNeXt, ViT, DINOv2, CLIP's vision
tower, ...). It returns a :class:`HubModel`: a :class:`HubBackbone` giving one feature
vector per image, the model's own image preparation (:class:`~.hub_config.HubPreprocessing`
from its ``preprocessor_config.json``: size, crop, resampling, rescale, mean and std), and,
when the model is a classifier, its classification head as an ``nn.Linear`` over those
features with the class names (LEEP and NCE scores need it). The features are what the
head reads (``pooling="auto"``): the pooled output of a convolutional model, the first
(CLS) token of ViT, CLS and mean patch token side by side for DINOv2 (as its classifier
reads them), the mean patch token for CLIP's classifier and CLIP's pooled output otherwise.

**No network unless asked.** A local folder is read with ``local_files_only=True``; a hub
id is looked up in the local Hugging Face cache only, unless ``allow_download=True`` (and
``HF_HUB_OFFLINE`` is unset). A config naming another model to fetch (``"backbone":
"microsoft/resnet-50"``) is refused.

**Nothing wrong in silence.** ``config.json`` and ``preprocessor_config.json`` are checked
field by field before anything is built (:mod:`.hub_config`); the network is first built on
PyTorch's ``meta`` device and its size compared with the weights in the files; after
loading, any backbone weight the files lack, any file tensor of the wrong shape and any
unexpected tensor inside the backbone is refused in one line (transformers would fill them
with random values and a log message fewshot silences).

**Safety.** Nothing here runs code from the folder or from zoo metadata: the config's
``model_type`` must be one ``transformers`` itself implements (``trust_remote_code`` is
never set and ``auto_map`` entries are refused), and weights are read with safetensors only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .hub_config import HubPreprocessing, check_hub_config, read_hub_config, read_preprocessing

#: The architecture name of Hugging Face backbones in pre-trained metadata.
HUB_ARCHITECTURE = "hf-transformers"
#: How a backbone name says it is a Hugging Face model: ``hf:<folder or hub id>``.
HUB_PREFIX = "hf:"
#: ImageNet statistics, the default of most vision models when the folder gives none.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLINGS = ("auto", "pooler", "cls", "mean", "patch-mean", "cls+patch-mean")
#: What each model type's image classifier reads: the pooling that makes ``head(features)`` its logits.
HEAD_POOLING = {"resnet": "pooler", "regnet": "pooler", "convnext": "pooler", "convnextv2": "pooler",
                "swin": "pooler", "swinv2": "pooler", "vit": "cls", "deit": "cls", "dinov2": "cls+patch-mean",
                "clip": "patch-mean"}
#: Model types whose image tower is loaded alone from a two-tower (image and text) checkpoint.
VISION_TOWERS = {"clip": "CLIPVisionModel"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("Hugging Face backbones need the optional extra: pip install 'fewshot[hub]' "
                          "(it installs transformers)") from None
    return transformers


def _config(options: Any, label: str = "the Hugging Face config"):
    """A transformers config from plain JSON (checked against the schema), only for a model type
    transformers implements."""
    transformers = _transformers()
    try:
        check_hub_config(options, label)
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    model_type = options["model_type"]
    if model_type not in transformers.CONFIG_MAPPING:
        raise ConfigError(f"transformers has no model type '{model_type[:60]}'")
    values = {k: v for k, v in options.items() if k not in ("model_type", "auto_map", "transformers_version")}
    try:
        return transformers.AutoConfig.for_model(model_type, **values)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ConfigError(f"{label} does not describe a {model_type} ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:160]})") from None


class HubBackbone(nn.Module):
    """A transformers vision model giving one feature vector per image (see the module docstring).

    It takes images scaled as the model's preprocessing scales them (``[0, 1]`` for 8-bit
    pixels) and normalises them with the model's ``mean`` and ``std``.
    """

    def __init__(self, model: nn.Module, image_shape: Sequence[int], mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, pooling: str = "auto"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
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
        if self.pooling == "mean":
            return hidden.mean(1)
        if self.pooling == "patch-mean":
            return hidden[:, 1:].mean(1)
        if self.pooling == "cls+patch-mean":
            return torch.cat([hidden[:, 0], hidden[:, 1:].mean(1)], dim=1)
        return hidden[:, 0]

    def architecture(self) -> tuple[str, dict]:
        """``(name, options)`` that :func:`build_hub_backbone` rebuilds this network from."""
        config = {k: v for k, v in self.model.config.to_dict().items()
                  if k not in ("auto_map", "transformers_version", "_name_or_path", "architectures")}
        options = {"config": config, "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(),
                   "pooling": self.pooling}
        if hasattr(self.model, "pooler") and self.model.pooler is None:
            options["pooler"] = False  # built without (or stripped of) its unused dense pooler
        return HUB_ARCHITECTURE, options


def _model_class(transformers, config):
    """The transformers class holding the image tower of ``config`` (AutoModel, or a vision tower)."""
    tower = VISION_TOWERS.get(config.model_type)
    return getattr(transformers, tower) if tower else transformers.AutoModel


def build_hub_backbone(image_shape: Sequence[int], config: dict | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD, pooling: str = "auto", pooler: bool = True) -> HubBackbone:
    """The (randomly initialised) :class:`HubBackbone` that ``config`` describes; the weights come separately."""
    transformers = _transformers()
    built = _config(config or {})
    cls = _model_class(transformers, built)
    model = cls.from_config(built) if cls is transformers.AutoModel else cls._from_config(
        getattr(built, "vision_config", built))
    if not pooler and hasattr(model, "pooler"):
        model.pooler = None
    return HubBackbone(model, image_shape, mean, std, pooling)


@dataclass
class HubModel:
    """A loaded Hugging Face vision model: features, preparation, classifier head, provenance."""

    backbone: HubBackbone
    preprocessing: HubPreprocessing
    head: nn.Linear | None = None
    labels: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    folder: Path | None = None

    @property
    def feature_dim(self) -> int:
        return int(self.metadata["feature_dim"])

    def embed(self, images: Sequence[Any], *, cache: Any = None, batch_size: int = 64,
              progress: Any = False) -> torch.Tensor:
        """Features ``(n, d)`` of images (paths, PIL images, image arrays), prepared as the model's own
        processor prepares them, each computed once per weights and preprocessing (:func:`fewshot.features.embed`)."""
        from ..features import embed

        return embed(self.backbone, images, self.preprocessing, cache=cache, batch_size=batch_size,
                     progress=progress)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The kept classifier's logits over :attr:`labels` for ``features`` (LEEP / NCE read them)."""
        if self.head is None:
            raise ConfigError(f"{self.metadata['hub']['name']} has no classifier head (it is a "
                              f"{self.metadata['objective']} model)")
        with torch.inference_mode():
            return self.head(features.to(self.head.weight.device, self.head.weight.dtype))


def is_hub_name(name: object) -> bool:
    """Whether ``name`` names a Hugging Face model (``hf:<folder or hub id>``)."""
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def resolve(name: str, allow_download: bool = False, revision: str | None = None) -> Path:
    """The local folder ``hf:NAME`` names: a folder, else a hub id in the local Hugging Face
    cache, else (only with ``allow_download``) the hub id downloaded (JSON and safetensors files only)."""
    spec = name[len(HUB_PREFIX):] if is_hub_name(name) else name
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"hf:{spec} is a file; name a save_pretrained folder or a hub id (org/name)")
    if spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise CheckpointError(f"hf:{spec}: no such folder (and not a hub id such as org/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigError("Hugging Face hub ids need the optional extra: pip install 'fewshot[hub]'") from None
    try:
        folder = snapshot_download(spec, revision=revision, allow_patterns=["*.json", "*.safetensors"],
                                   local_files_only=not allow_download)
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises many kinds (offline, 404, HTTP, ...)
        if not allow_download:
            raise CheckpointError(
                f"hf:{spec} is neither a folder here nor in the local Hugging Face cache, and fewshot downloads "
                f"nothing unless asked: run `huggingface-cli download {spec}` on a connected machine (or give a "
                f"local save_pretrained folder, or allow the download)") from None
        raise CheckpointError(f"cannot download hf:{spec} ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:160]}); check the id, the network and HF_HUB_OFFLINE, "
                              f"or give a local folder") from None
    return Path(folder)


def _file_sizes(folder: Path) -> tuple[list[Path], int]:
    """The folder's safetensors files and how many values they hold (read from their headers only)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} has no .safetensors weights (fewshot never reads pickled .bin files); "
                              f"save the model with save_pretrained(..., safe_serialization=True)")
    total = 0
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    n = 1
                    for s in f.get_slice(key).get_shape():
                        n *= int(s)
                    total += n
        except Exception as e:  # noqa: BLE001 - safetensors raises several kinds
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    return files, total


def _classifier(model: nn.Module) -> tuple[nn.Module, nn.Linear | None]:
    """``(image tower, linear head)`` of a transformers image classifier."""
    body = [m for name, m in model.named_children() if name != "classifier" and any(True for _ in m.parameters())]
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Sequential):
        layers = [m for m in head if not isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout))]
        head = layers[0] if len(layers) == 1 else None
    if len(body) != 1 or not isinstance(head, nn.Linear):
        raise CheckpointError(f"cannot separate the {type(model).__name__}'s image tower from its classifier")
    return body[0], head


def _loaded(transformers, cls, folder: Path, config, files: list[Path], have: int, loads_pooler: bool) -> nn.Module:
    """``cls`` loaded from ``folder``, refused unless every backbone weight came from the files."""
    try:
        with torch.device("meta"):  # sizes only: nothing allocated
            skeleton = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError, ImportError) as e:
        raise CheckpointError(f"{folder}/config.json does not describe a network transformers can build here "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    optional = (lambda key: not loads_pooler and ".pooler." in f".{key}")
    need = sum(t.numel() for k, t in skeleton.state_dict().items() if not optional(k))
    tops = {k.split(".")[0] for k in skeleton.state_dict()} | {name for name, _ in skeleton.named_children()}
    del skeleton
    label = files[0] if len(files) == 1 else f"{folder}/*.safetensors"
    if need > have:
        raise CheckpointError(f"{label}: config.json describes a network of {need:,} values, the weights hold "
                              f"{have:,}; the files do not belong together")
    try:
        model, info = cls.from_pretrained(str(folder), config=config, local_files_only=True, use_safetensors=True,
                                          trust_remote_code=False, output_loading_info=True,
                                          ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, ImportError) as e:
        raise CheckpointError(f"{folder} is not a loadable transformers model ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if not optional(k))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ()))
    # Unexpected tensors of another part (a text tower, a pre-training head) are fine; inside
    # the backbone they mean the files were saved from another configuration.
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if k.split(".")[0] in tops)
    if missing or mismatched or unexpected:
        first = (missing or mismatched or unexpected)[0]
        raise CheckpointError(
            f"{label} does not match config.json: {len(missing)} backbone weights missing, {len(mismatched)} of the "
            f"wrong shape, {len(unexpected)} unexpected (first: {first}); transformers would fill them with random "
            f"values, so the folder is refused: save the model again with save_pretrained")
    if not loads_pooler and hasattr(model, "pooler") and any(True for _ in model.pooler.parameters()):
        model.pooler = None  # its weights were not in the files and nothing reads it
    return model


def load_backbone(name: str | Path, *, allow_download: bool = False, pooling: str = "auto",
                  revision: str | None = None, keep_head: bool = True,
                  image_shape: Sequence[int] | None = None) -> HubModel:
    """``hf:<folder or hub id>`` as a :class:`HubModel` (see the module docstring).

    ``allow_download`` lets a hub id missing from the local cache be downloaded;
    ``pooling`` overrides the feature pooling (one of :data:`POOLINGS`; a kept head
    needs the one its classifier reads, so another pooling drops the head);
    ``image_shape`` overrides the input size the preprocessing gives.
    """
    transformers = _transformers()
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    folder = resolve(str(name), allow_download, revision)
    raw = read_hub_config(folder / "config.json")
    files, have = _file_sizes(folder)
    vision = raw.get("vision_config") if raw["model_type"] in VISION_TOWERS else raw
    channels = int((vision or {}).get("num_channels", 3))
    side = (vision or {}).get("image_size")
    prep = read_preprocessing(folder, channels, side[0] if isinstance(side, list) else side)
    architectures = raw.get("architectures") or []
    classifies = any(str(a).endswith("ForImageClassification") for a in architectures)
    head_pooling = HEAD_POOLING.get(raw["model_type"])
    keep = keep_head and classifies and head_pooling is not None and pooling in ("auto", head_pooling)
    if pooling == "auto":
        # Without a head: CLIP's pooled output, a parameter-free pooler where the classifier reads
        # one (Swin has no first token to read), else "auto".
        pooling = head_pooling if keep else (
            "pooler" if raw["model_type"] in VISION_TOWERS or head_pooling == "pooler" else "auto")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # no load reports or progress bars on the user's terminal
    transformers.utils.logging.disable_progress_bar()
    try:
        try:
            config = _config(raw, str(folder / "config.json"))
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        if keep:
            cls, load_config = transformers.AutoModelForImageClassification, config
        else:
            cls = _model_class(transformers, config)
            load_config = config.vision_config if cls is not transformers.AutoModel else config
        model = _loaded(transformers, cls, folder, load_config, files, have, loads_pooler=pooling == "pooler")
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()
    model = model.float()  # a half-precision checkpoint computes in float32 like every fewshot backbone
    head = None
    if keep:
        model, head = _classifier(model)
        if hasattr(model, "pooler") and model.pooler is not None and pooling != "pooler" and any(
                True for _ in model.pooler.parameters()):
            model.pooler = None
        head = head.float().eval()
    height, width = prep.size
    shape = list(image_shape) if image_shape is not None else [channels, height, width]
    backbone = HubBackbone(model, shape, prep.mean, prep.std, pooling).eval()
    labels = [str(v) for _, v in sorted((int(k), v) for k, v in (raw.get("id2label") or {}).items())] if keep else []
    source = {"dataset": str(raw.get("_name_or_path") or folder.name), "hub_model_type": raw["model_type"]}
    if keep:
        source.update(num_classes=len(labels), classes=labels)
    try:
        with torch.no_grad():
            dim = int(backbone(torch.zeros(1, *shape)).shape[1]) if head is None else head.in_features
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"hf:{folder} does not take images of shape {shape} ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:160]}); give the size its config names") from None
    meta = {"objective": "image-classification" if classifies else "feature-extraction", "source": source,
            "feature_dim": dim, "preprocessing": prep.to_dict(),
            "hub": {"model_type": raw["model_type"], "architectures": architectures, "folder": str(folder.resolve()),
                    "name": str(name), "pooling": pooling, "head_kept": head is not None}}
    if classifies and head is None:
        meta["hub"]["head_dropped"] = (
            "keep_head=False" if not keep_head else f"pooling {pooling!r} is not what the classifier reads"
            if head_pooling is not None else f"fewshot does not know what a {raw['model_type']} classifier reads")
    return HubModel(backbone, prep, head, labels, meta, folder)


__all__ = ["HEAD_POOLING", "HUB_ARCHITECTURE", "HUB_PREFIX", "HubBackbone", "HubModel", "IMAGENET_MEAN", "IMAGENET_STD",
           "POOLINGS", "build_hub_backbone", "is_hub_name", "load_backbone", "resolve"]
