"""Runs: everything about a trained model, below the trainer and above the methods.

* :class:`Run` (:mod:`fewshot.runs.folder`) owns a run folder: its file names, config,
  checked state, checkpoints and best weights, its own test protocol, and the
  crash-consistent writes the trainer makes through it. :meth:`Run.open` is the one
  door to every form a trained model takes: a run folder, an exported model
  (:mod:`fewshot.runs.exported`), a Hugging Face backbone ``hf:...`` (:mod:`fewshot.runs.hub`).
* :mod:`fewshot.runs.model` builds the model a config describes and loads its weights;
  :mod:`fewshot.runs.checkpoint` is what a training checkpoint holds.
* Here: a run as others use it, as a :class:`~fewshot.models.pretrained.Pretrained`
  backbone for a model zoo, or a fine-tuning method for transfer. Nothing here trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError
from ..methods import Method
from ..methods.transfer import FineTune, wrap
from ..models.backbones import feature_dim
from ..models.pretrained import (FORMAT, VERSION, Pretrained, count_parameters, describe_architecture, describe_head,
                                 load_pretrained, read_metadata, save_pretrained)
from .exported import Exported
from .folder import LEFTOVER, RUN_FILE, WHICH, Run, remove_unfinished_run
from .hub import DEFAULT_HEAD, HubSource, features_of
from .model import (CUSTOM_BACKBONE, Loaded, Protocol, build_model, conv4_depth, describe_module, load_weights,
                    model_tensors)


def load_run(run_dir: str | Path, which: str = "best", *, backbone: nn.Module | None = None
             ) -> tuple[TrainConfig, Method, dict]:
    """A trained run: its config, its method with the ``best`` (or ``last``) weights, its state.
    ``backbone``: the module of a run trained with your own backbone (its weights are loaded into it)."""
    loaded = Run(run_dir).load(which, backbone=backbone)
    return loaded.config, loaded.method, loaded.state


def read_state(run_dir: str | Path) -> dict[str, Any]:
    """The checked state of the run in ``run_dir`` (:meth:`Run.read_state`)."""
    return Run(run_dir).read_state()


def pretrained_from_run(run_dir: str | Path, path: str | Path | None = None, which: str = "best",
                        metadata: dict | None = None) -> Pretrained:
    """A trained run's backbone and head as a :class:`Pretrained` (saved to ``path`` if given),
    its metadata filled from the run's config: architecture, source data, objective.
    ``run_dir`` may also be anything ``fewshot export`` wrote (:meth:`Run.open`)."""
    loaded = Run.open(run_dir).load(which)
    config, method, image_shape = loaded.config, loaded.method, loaded.image_shape
    source = {"dataset": config.dataset, "dataset_options": config.dataset_options, "split": config.train_split,
              "run": str(Path(run_dir).resolve()), "steps": loaded.source.get("steps"), "seed": config.seed}
    classes = method.source_classes()
    if classes is not None:
        source["num_classes"] = len(classes)
        if all(c >= 0 for c in classes):
            source["classes"] = classes
    # The architecture is described from the built network, not the config: a config's
    # options leave out what was chosen for the data (Conv-4's depth for 8x8 digits).
    meta = {"training": {"method_options": config.method_options, "episodes": config.episodes, "lr": config.lr,
                         "train_shape": list(config.train_shape)}, **(metadata or {})}
    backbone, head = method.backbone, method.head
    if backbone is None:
        raise ConfigError(f"{run_dir} trained '{config.method}', which has no backbone to reuse")
    if path is not None:
        save_pretrained(backbone, path, meta, image_shape=image_shape, head=head, source=source,
                        objective=config.method)
        return Pretrained(backbone, head, read_metadata(path))
    name, options = describe_architecture(backbone)
    full = {"format": FORMAT, "version": VERSION, "architecture": name, "architecture_options": options,
            "image_shape": image_shape, "parameters": count_parameters(backbone),
            "feature_dim": feature_dim(backbone, image_shape) if image_shape else None,
            "head": describe_head(head), "source": source, "objective": config.method, **meta}
    return Pretrained(backbone, head, full)


def load_adaptable(path: str | Path, which: str = "best") -> Method | Pretrained:
    """What a path holds, ready to adapt: a run folder's trained method, or a
    pre-trained model file (``.safetensors`` with its metadata)."""
    if Run.is_run(path):
        return load_run(path, which)[1]
    return load_pretrained(path)


def finetune_from(path: str | Path, strategy: str = "finetune", which: str = "best", **options: Any) -> FineTune:
    """A :class:`~fewshot.methods.transfer.FineTune` (``strategy``) around the backbone
    of a run folder or a pre-trained model file."""
    return wrap(load_adaptable(path, which), strategy, **options)


__all__ = ["CUSTOM_BACKBONE", "DEFAULT_HEAD", "Exported", "HubSource", "features_of", "LEFTOVER", "Loaded", "Protocol", "RUN_FILE", "Run", "WHICH", "build_model",
           "conv4_depth", "describe_module", "finetune_from", "load_adaptable", "load_run", "load_weights",
           "model_tensors", "pretrained_from_run", "read_state", "remove_unfinished_run"]
