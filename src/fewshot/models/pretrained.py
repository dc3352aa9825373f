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

``architecture`` is a name :func:`~fewshot.models.build_backbone` knows (then
:func:`load_pretrained` rebuilds the network alone) or, for a user's own module, its
class name (then pass the module to load the weights into). Any safetensors file of a
module's ``state_dict`` — with or without the ``backbone.`` prefix and with no JSON —
loads into that module with ``load_pretrained(path, module=...)``. Weights that do not
fit the metadata or the module raise :class:`~fewshot.errors.CheckpointError` naming
the mismatch. Nothing is pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..io import load_tensors, read_json, save_tensors, write_json
from .backbones import BACKBONES, MLP, Conv4, ResNet12, ResidualBlock, build_backbone, feature_dim
from .heads import CosineHead

FORMAT = "fewshot-pretrained"
VERSION = 1


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
        return read_json(sidecar)
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds
        raise CheckpointError(f"{weights} is not a readable safetensors file ({e})") from None
    return json.loads(header["fewshot"]) if "fewshot" in header else None


def _load_into(module: nn.Module, tensors: dict[str, torch.Tensor], what: str, path: Path) -> None:
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
    module.load_state_dict(tensors)


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
        arch = meta.get("architecture")
        if arch not in BACKBONES:
            raise CheckpointError(
                f"{weights} holds a '{arch or 'undescribed'}' network, which fewshot cannot rebuild by itself; "
                f"pass the module to load it into: load_pretrained(path, module=MyNet())")
        if not meta.get("image_shape"):
            raise CheckpointError(f"{weights}: its metadata lacks image_shape, needed to rebuild a {arch}")
        try:
            module = build_backbone(arch, meta["image_shape"], **meta.get("architecture_options", {}))
        except ConfigError as e:
            raise CheckpointError(f"{weights}: its metadata does not describe a buildable {arch} ({e})") from None
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


__all__ = ["Pretrained", "count_parameters", "describe_architecture", "describe_head", "load_pretrained", "read_metadata", "save_pretrained"]
