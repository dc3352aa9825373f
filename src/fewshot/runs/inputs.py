"""What a run records about its inputs: the dataset and backbone really trained on, the
data's description, and the preprocessing new inputs must follow. The trainer writes
them into a run's config and state; nothing here trains."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from ..data import IN_MEMORY, ClassDataset
from ..images import Preprocessing
from .model import CUSTOM_BACKBONE, describe_module


def describe_inputs(config: TrainConfig, dataset: ClassDataset | None, backbone: nn.Module | None) -> TrainConfig:
    """``config`` saying what is really trained: the dataset passed in (loaded by name:
    that name and its options; in memory: ``memory:NAME``, which cannot be loaded again
    by name) and the backbone module passed in (``custom``, with its class recorded)."""
    changes: dict = {}
    if dataset is not None:
        if dataset.origin is not None:
            changes.update(dataset=dataset.origin["name"], dataset_options=dict(dataset.origin["options"]))
        else:
            changes.update(dataset=f"{IN_MEMORY}{dataset.name}", dataset_options={})
    if backbone is not None:
        changes.update(backbone=CUSTOM_BACKBONE, backbone_options=describe_module(backbone))
    options = changes.get("dataset_options", config.dataset_options)
    if isinstance(options.get("path"), str):  # a folder dataset: found again from any working directory
        changes["dataset_options"] = {**options, "path": str(Path(options["path"]).expanduser().resolve())}
    return dataclasses.replace(config, **changes) if changes else config


def describe_data(config: TrainConfig, dataset: ClassDataset | None) -> dict:
    """The record of what a run trained on (its state's ``data``)."""
    if dataset is None:
        return {"name": config.dataset, "generated": True}
    return {"name": config.dataset, "in_memory": dataset.origin is None, "options": config.dataset_options,
            "classes": dataset.num_classes, "images": int(len(dataset.images)),
            "image_shape": list(dataset.image_shape),
            "splits": {name: len(classes) for name, classes in dataset.splits.items()}}


def preprocessing_of(dataset: ClassDataset) -> Preprocessing:
    """What the model's inputs look like: uint8 images become [0, 1]; float arrays keep
    their own range (recorded, so new inputs can be checked against it)."""
    c, h, w = dataset.image_shape
    if dataset.images.dtype == torch.uint8:
        return Preprocessing(c, h, w)
    lo, hi = float(dataset.images.min()), float(dataset.images.max())
    if lo >= 0.0 and hi <= 1.0:
        return Preprocessing(c, h, w)
    return Preprocessing(c, h, w, (lo, hi if hi > lo else lo + 1.0))


__all__ = ["describe_data", "describe_inputs", "preprocessing_of"]
