"""Pre-trained models on disk: safetensors weights plus a JSON description.

A pre-trained model is two files side by side::

    NAME.safetensors   weights: "backbone.<name>" and, when it has one, "head.<name>"
    NAME.json          metadata (also embedded in the safetensors header, key "fewshot")

The metadata says what the model is and where it came from::

    {"format": "fewshot-pretrained", "version": 1,
     "architecture": "conv4", "architecture_options": {"width": 64, "depth": 4},
     "image_shape": [1, 28, 28], "parameters": 112576, "feature_dim": 64,
     "head": {"type": "cosine", "in_features": 64, "out_features": 4112, "scale": 10.0, ...} | null,
     "source": {"dataset": "omniglot", "dataset_options": {...}, "split": "train", "num_classes": 4112,
                "classes": [...]},
     "objective": "baseline++", ...anything else passed as metadata}

``architecture`` is a name of :data:`~fewshot.models.backbones.BACKBONES` (the built-in
backbones and those a user or plug-in registered, e.g. with :func:`register_architecture`:
then :func:`load_pretrained` rebuilds the network alone from ``architecture_options``),
or, for any other module, its class name (then pass the module to load the weights into).

**Nothing read from a file names code to run.** Metadata can only pick a network from
the built-in backbones and the architectures registered in the running Python process
(an explicit allow-list); its options are plain JSON values. A network is first built on
PyTorch's ``meta`` device (no memory) and checked against the file's tensor shapes, so
absurd options are refused before anything is allocated. Any safetensors file of a
module's ``state_dict`` — with or without the ``backbone.`` prefix and with no JSON —
loads into that module with ``load_pretrained(path, module=...)``. Weights that do not
fit the metadata or the module raise :class:`~fewshot.errors.CheckpointError` naming
the mismatch. Nothing is pickled.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..io import load_tensors, parse_json, read_json, save_tensors, write_json
from .backbones import BACKBONES, MLP, Conv4, ResNet12, ResidualBlock, build_backbone, feature_dim
from .heads import CosineHead
from .hub import HUB_ARCHITECTURE, build_hub_backbone

FORMAT = "fewshot-pretrained"
VERSION = 1
#: Largest image side a pre-trained model's metadata may declare (DINOv2 takes 518).
MAX_IMAGE_SIDE = 1024
#: Most values one input may hold (channels × height × width; vectors are [features, 1, 1]).
MAX_INPUT = 1 << 22

_BUILT_IN = (Conv4, ResNet12, MLP)
_ARCHITECTURE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]{0,79}$")


def register_architecture(name: str, build: Callable[..., nn.Module], *, replace: bool = False) -> None:
    """Let pre-trained metadata whose ``architecture`` is ``name`` be rebuilt by ``build``.

    ``build(**architecture_options)`` returns the network (a class works: ``TwoLayer`` is
    called as ``TwoLayer(**options)``; a parameter ``in_channels``, ``in_features`` or
    ``image_shape`` is filled from the input shape when not given). It joins
    :data:`~fewshot.models.backbones.BACKBONES`, the one registry a file can name a
    network from: it lives in the running process, so a file can only choose among
    networks its user registered, never import code.
    Registering the class of a module also lets :func:`save_pretrained` (and
    ``Zoo.add``) record it by that name.
    """
    if not isinstance(name, str) or not _ARCHITECTURE_NAME.match(name):
        raise ConfigError(f"architecture name {name!r} must start with a letter and hold letters, digits and "
                          f"_.+- (at most 80 characters)")
    if BACKBONES.get(name) in _BUILT_IN or name == HUB_ARCHITECTURE:
        raise ConfigError(f"'{name}' is a built-in architecture; register yours under another name")
    if not callable(build):
        raise ConfigError(f"register_architecture('{name}', ...) needs a callable that returns an nn.Module")
    if name in BACKBONES and BACKBONES[name] is not build and not replace:
        raise ConfigError(f"an architecture '{name}' is registered already; pass replace=True to change it")
    BACKBONES.register(name, build, replace=replace)


def built_in_architectures() -> list[str]:
    """The built-in backbones' names: the same in every process, whatever was registered."""
    return [name for name, build in BACKBONES.items() if build in _BUILT_IN]


def registered_architectures() -> list[str]:
    """The names :func:`register_architecture` added (built-ins not included)."""
    return sorted(name for name, build in BACKBONES.items() if build not in _BUILT_IN)


def known_architecture(name: object) -> bool:
    """Whether metadata naming ``name`` can be rebuilt: a built-in backbone, the Hugging Face
    backbone or a registered architecture."""
    return isinstance(name, str) and (name in BACKBONES or name == HUB_ARCHITECTURE)


def _registered_name(module: nn.Module) -> str | None:
    for name, build in BACKBONES.items():
        if build is type(module):
            return name
    return None


def check_image_shape(shape: Any, where: str) -> list[int]:
    """``shape`` as ``[channels, height, width]``, or a one-line CheckpointError saying what is wrong."""
    ok = (isinstance(shape, (list, tuple)) and len(shape) == 3
          and all(isinstance(v, int) and not isinstance(v, bool) for v in shape))
    if not ok or min(shape) < 1 or max(shape[1:]) > MAX_IMAGE_SIDE or shape[0] * shape[1] * shape[2] > MAX_INPUT:
        raise CheckpointError(f"{where}: image_shape must be [channels, height, width] of positive integers, sides "
                              f"of at most {MAX_IMAGE_SIDE} and at most {MAX_INPUT:,} values in all; got "
                              f"{str(shape)[:60]}")
    return [int(v) for v in shape]


def _construct(arch: str, image_shape: Sequence[int], options: dict) -> nn.Module:
    """The network ``arch`` names, from the built-ins or the registry (never an import)."""
    if not isinstance(options, dict):
        raise ConfigError(f"architecture_options must be a JSON object, got {type(options).__name__}")
    if arch in BACKBONES:
        return build_backbone(arch, image_shape, **options)
    if arch == HUB_ARCHITECTURE:
        return build_hub_backbone(image_shape, **options)
    raise ConfigError(f"unknown architecture '{arch}'")


@dataclass
class Pretrained:
    """A loaded pre-trained model: its backbone, its classifier head (or None), its metadata."""

    backbone: nn.Module
    head: nn.Module | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def feature_dim(self) -> int | None:
        return self.metadata.get("feature_dim")


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_architecture(backbone: nn.Module) -> tuple[str, dict]:
    """``(name, options)`` that :func:`build_backbone` rebuilds ``backbone`` from, for the
    built-in backbones; ``(class name, {})`` for any other module."""
    if type(backbone) is Conv4:
        return "conv4", {"width": backbone.width, "depth": backbone.depth}
    if type(backbone) is ResNet12:
        widths = [b.body[0].out_channels for b in backbone if isinstance(b, ResidualBlock)]
        return "resnet12", {"widths": widths}
    if type(backbone) is MLP:
        layers = list(backbone)
        linears = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
        out_features = None
        if linears and linears[-1] == len(layers) - 1:
            out_features = layers[linears[-1]].out_features
            linears = linears[:-1]
        options: dict[str, Any] = {"hidden": [layers[i].out_features for i in linears],
                                   "batch_norm": any(isinstance(m, nn.BatchNorm1d) for m in layers)}
        if out_features is not None:
            options["out_features"] = out_features
        return "mlp", options
    describe = getattr(backbone, "architecture", None)
    if callable(describe):  # a Hugging Face backbone describes itself (models/hub.py)
        return describe()
    registered = _registered_name(backbone)
    if registered is not None:
        return registered, {}
    return f"{type(backbone).__module__}.{type(backbone).__qualname__}", {}


def describe_head(head: nn.Module | None) -> dict | None:
    if head is None:
        return None
    if isinstance(head, CosineHead):
        return {"type": "cosine", "in_features": head.in_features, "out_features": head.out_features,
                "scale": head.scale, "learnable_norm": head.learnable_norm}
    if isinstance(head, nn.Linear):
        return {"type": "linear", "in_features": head.in_features, "out_features": head.out_features,
                "bias": head.bias is not None}
    return {"type": f"{type(head).__module__}.{type(head).__qualname__}"}


def _build_head(spec: dict | None) -> nn.Module | None:
    if not spec:
        return None
    if spec.get("type") == "cosine":
        return CosineHead(spec["in_features"], spec["out_features"], spec.get("scale"), spec.get("learnable_norm", True))
    if spec.get("type") == "linear":
        return nn.Linear(spec["in_features"], spec["out_features"], bias=spec.get("bias", True))
    return None


def save_pretrained(backbone: nn.Module, path: str | Path, metadata: dict | None = None, *,
                    image_shape: Sequence[int] | None = None, head: nn.Module | None = None,
                    source: dict | None = None, objective: str | None = None,
                    architecture: str | None = None, architecture_options: dict | None = None) -> Path:
    """Save a backbone (and a classifier ``head`` over its features) as a pre-trained model.

    ``image_shape`` is needed to record the feature width. ``objective`` names how it
    was trained (a method's name); ``source`` describes the training data (dataset,
    options, split, classes); ``metadata`` adds or overrides any field. Returns the
    path of the weights file. A trained method's backbone and head:
    :func:`fewshot.runs.pretrained_from_run`.
    """
    if not isinstance(backbone, nn.Module):
        raise ConfigError(f"save_pretrained needs the backbone nn.Module, got {type(backbone).__name__}")
    name, options = describe_architecture(backbone)
    meta: dict[str, Any] = {
        "format": FORMAT, "version": VERSION,
        "architecture": architecture or name, "architecture_options": architecture_options or options,
        "image_shape": list(image_shape) if image_shape is not None else None,
        "parameters": count_parameters(backbone),
        "feature_dim": feature_dim(backbone, image_shape) if image_shape is not None else None,
        "head": describe_head(head),
        "head_parameters": count_parameters(head) if head is not None else 0,
        "source": source or {},
        "objective": objective,
    }
    meta.update(metadata or {})
    try:
        text = json.dumps(meta)
    except TypeError as e:
        raise ConfigError(f"pre-trained metadata must be JSON-serialisable: {e}") from None
    tensors = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    if head is not None:
        tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
    weights, sidecar = _paths(path)
    save_tensors(weights, tensors, metadata={"fewshot": text})
    write_json(sidecar, meta)
    return weights


def read_metadata(path: str | Path) -> dict | None:
    """The metadata of a pre-trained model: the JSON file, else the safetensors header, else None."""
    weights, sidecar = _paths(path)
    if sidecar.exists():
        meta = read_json(sidecar)
        if not isinstance(meta, dict):
            raise CheckpointError(f"{sidecar} is not a JSON object of metadata")
        return meta
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds
        raise CheckpointError(f"{weights} is not a readable safetensors file ({e})") from None
    if "fewshot" not in header:
        return None
    meta = parse_json(header["fewshot"], f"{weights}: its header's fewshot metadata", CheckpointError)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{weights}: its header's fewshot metadata is not a JSON object")
    return meta


def _load_into(module: nn.Module, tensors: dict[str, torch.Tensor], what: str, path: Path,
               check_only: bool = False) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(f"shape of {k}: file {tuple(tensors[k].shape)}, {what} {tuple(expected[k].shape)}"
                         f"{f' (and {len(wrong) - 1} more)' if len(wrong) > 1 else ''}")
        raise CheckpointError(f"{path} does not fit the {what}: {'; '.join(parts)}")
    if not check_only:
        module.load_state_dict(tensors)


def rebuild(meta: dict, tensors: dict[str, torch.Tensor], weights: Path) -> nn.Module:
    """The network ``meta`` describes, checked against ``tensors`` before any memory is spent.

    Only built-in backbones and architectures registered with :func:`register_architecture`
    can be named. The network is first built on the ``meta`` device, where parameters have
    shapes but no storage, and compared with the file; only a network that fits is built
    for real, so metadata with absurd options (a width of ten million) costs nothing.
    """
    arch = meta.get("architecture")
    if not known_architecture(arch):
        known = ", ".join(BACKBONES)
        raise CheckpointError(
            f"{weights} holds a '{str(arch)[:80] if arch else 'undescribed'}' network, which is neither built in nor "
            f"registered ({known}); register it in Python with fewshot.models.register_architecture(name, "
            f"build), or pass the module: load_pretrained(path, module=MyNet())")
    if not meta.get("image_shape"):
        raise CheckpointError(f"{weights}: its metadata lacks image_shape, needed to rebuild a {arch}")
    shape = check_image_shape(meta["image_shape"], str(weights))
    options = meta.get("architecture_options") or {}
    try:
        try:
            with torch.device("meta"):
                skeleton = _construct(arch, shape, options)
        except RuntimeError:
            # A user's registered network whose constructor reads tensor values cannot be
            # built on the meta device; it is the user's own code, so it is built for real.
            if BACKBONES.get(arch) in _BUILT_IN:
                raise
            skeleton = _construct(arch, shape, options)
        _check_shapes(skeleton, tensors, weights)
        return _construct(arch, shape, options)
    except ConfigError as e:
        raise CheckpointError(f"{weights}: its metadata does not describe a buildable {arch} ({e})") from None
    except (RuntimeError, ValueError, OverflowError, MemoryError) as e:
        raise CheckpointError(f"{weights}: cannot build the {arch} its metadata describes "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def _check_shapes(module: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    if set(expected) != set(tensors) or any(expected[k].shape != tensors[k].shape for k in expected):
        # The same comparison, with a message naming the mismatch, as for a real module.
        _load_into(module, tensors, "backbone", path, check_only=True)


def load_pretrained(path: str | Path, module: nn.Module | None = None) -> Pretrained:
    """Load a pre-trained model saved by :func:`save_pretrained`, or any safetensors
    file of a module's weights into ``module``.

    Without ``module`` the metadata must name a built-in architecture, which is rebuilt.
    With it, the weights (keys ``backbone.*``, or bare ``state_dict`` keys) are loaded
    into ``module``, which is returned as the backbone.
    """
    weights, _ = _paths(path)
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing; save a model with save_pretrained or give a .safetensors file")
    meta = read_metadata(path) or {}
    tensors = load_tensors(weights)
    if any(k.startswith("backbone.") for k in tensors):
        body = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
        head_tensors = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    else:
        body, head_tensors = dict(tensors), {}
    if module is None:
        module = rebuild(meta, body, weights)
    _load_into(module, body, "backbone", weights)
    if meta.get("parameters") is not None and count_parameters(module) != meta["parameters"]:
        raise CheckpointError(f"{weights}: the backbone has {count_parameters(module)} parameters, its metadata "
                              f"says {meta['parameters']}; the files do not belong together")
    head = None
    if head_tensors:
        head = _build_head(meta.get("head"))
        if head is not None:
            _load_into(head, head_tensors, "head", weights)
    module.eval()
    return Pretrained(module, head, meta)


__all__ = ["HUB_ARCHITECTURE", "MAX_IMAGE_SIDE", "MAX_INPUT", "Pretrained", "built_in_architectures", "check_image_shape",
           "count_parameters", "describe_architecture", "describe_head", "known_architecture", "load_pretrained", "read_metadata",
           "rebuild", "register_architecture", "registered_architectures", "save_pretrained"]
