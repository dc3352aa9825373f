"""Run folders: everything about one, below the trainer and above the methods.

A run lives in one folder::

    config.json                       the TrainConfig
    state.json                        step, history, best validation, optimiser settings
    checkpoint-NNNNNNN.safetensors    weights, optimiser tensors and RNG state at step N
    best-NNNNNNN.safetensors          weights with the best validation score

This module builds the model a config describes, reads and checks ``state.json``,
loads the ``best`` (or ``last``) weights, and turns a run into what other parts use:
a :class:`~fewshot.models.pretrained.Pretrained` backbone for a model zoo, or a
fine-tuning method for transfer. The trainer (:mod:`fewshot.train`) writes run
folders with it; nothing here trains.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from .data.tasks import backbone_defaults, method_defaults, task_kind
from .errors import CheckpointError, ConfigError, FewShotError
from .io import LOCK_NAME, load_tensors, read_json
from .methods import Method, build_method
from .methods.transfer import FineTune, wrap
from .models import build_backbone
from .models.backbones import feature_dim
from .models.pretrained import (FORMAT, VERSION, Pretrained, count_parameters, describe_architecture, describe_head,
                                load_pretrained, read_metadata, save_pretrained)

WHICH = ("best", "last")
#: The files of a run folder, and the temporary files of their atomic writes: the only
#: names a run ever writes, overwrites or removes (a user's other files are never touched).
RUN_FILE = re.compile(r"^(config\.json|state\.json|(checkpoint|best)-\d{7}\.safetensors)$")
LEFTOVER = re.compile(r"^\.(config\.json|state\.json|(checkpoint|best)-\d{7}\.safetensors)\.\w+\.tmp$")


#: ``TrainConfig.backbone`` of a run whose backbone is the user's own ``nn.Module``.
CUSTOM_BACKBONE = "custom"


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


def load_run(run_dir: str | Path, which: str = "best", *, backbone: nn.Module | None = None
             ) -> tuple[TrainConfig, Method, dict]:
    """A trained run: its config, its method with the ``best`` (or ``last``) weights, its state.
    ``backbone``: the module of a run trained with your own backbone (its weights are loaded into it)."""
    if which not in WHICH:
        raise ConfigError(f"which weights: choose one of {', '.join(WHICH)}, not '{which}'")
    run_dir = Path(run_dir)
    if not (run_dir / "state.json").exists():
        raise CheckpointError(f"{run_dir} is not a fewshot run folder (no state.json); train one with `fewshot train`")
    config = TrainConfig.from_dict(read_json(run_dir / "config.json"))
    state = read_state(run_dir)
    method = build_model(config, tuple(state["image_shape"]), backbone=backbone)
    entry = state.get("best") if which == "best" and state.get("best") else {"file": state["checkpoint"]}
    if entry["file"] is None:
        raise CheckpointError(f"{run_dir} holds no checkpoint yet; train it further with `fewshot train --resume {run_dir}`")
    tensors = load_tensors(run_dir / entry["file"])
    load_weights(method, tensors, run_dir / entry["file"])
    return config, method, state


def read_state(run_dir: Path) -> dict[str, Any]:
    """``state.json`` of a run, checked for the fields the trainer relies on: a damaged
    or edited file is a :class:`CheckpointError`, never a crash."""
    path = run_dir / "state.json"
    state = read_json(path)

    def plain_name(name: Any) -> bool:  # a file of this run folder, not a path elsewhere
        return isinstance(name, str) and name == Path(name).name and not name.startswith(".")

    problem = None
    if not isinstance(state, dict):
        problem = f"holds a JSON {type(state).__name__}, not an object"
    elif not isinstance(state.get("step"), int) or isinstance(state.get("step"), bool) or state["step"] < 0:
        problem = "has no valid 'step'"
    elif not (isinstance(state.get("image_shape"), list) and state["image_shape"]
              and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in state["image_shape"])):
        problem = "has no valid 'image_shape'"
    elif state.get("checkpoint") is not None and not plain_name(state["checkpoint"]):
        problem = "names no valid 'checkpoint' file"
    elif state.get("best") is not None and not (isinstance(state["best"], dict) and plain_name(state["best"].get("file"))):
        problem = "names no valid 'best' file"
    elif state.get("checkpoint") is not None and not (isinstance(state.get("optimizer"), dict)
                                                      and isinstance(state.get("scheduler"), dict)):
        problem = "lacks the optimiser or scheduler settings"
    else:
        problem = _progress_problem(state)
    if problem:
        raise CheckpointError(f"{path} {problem}; the run folder is damaged")
    return state


def _real(value: Any) -> bool:
    """A JSON number (NaN included: a metric a method does not report)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any, low: float = 0.0) -> bool:
    """A finite JSON number of at least ``low``."""
    return _real(value) and math.isfinite(value) and value >= low


def _progress_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with the bookkeeping fields of a state (history, running log, clocks,
    best score, optimiser scalars), or None."""
    history = state.get("history")
    if not (isinstance(history, dict) and isinstance(history.get("train"), list) and isinstance(history.get("val"), list)
            and all(isinstance(row, list) and len(row) == 3 and isinstance(row[0], int)
                    and all(v is None or _real(v) for v in row[1:])
                    for row in history["train"] + history["val"])):
        return "has no valid 'history'"
    log = state.get("log")
    if not (isinstance(log, dict) and _real(log.get("loss")) and _real(log.get("accuracy"))
            and isinstance(log.get("count"), int) and not isinstance(log.get("count"), bool) and log["count"] >= 0):
        return "has no valid 'log'"
    if not (_number(state.get("seconds")) and _number(state.get("cpu_seconds"))):
        return "has no valid 'seconds' or 'cpu_seconds'"
    if not isinstance(state.get("done", False), bool):
        return "has no valid 'done'"
    best = state.get("best")
    if best is not None and not all(v is None or _real(v) for k, v in best.items() if k != "file"):
        return "has no valid 'best' scores"
    optimizer = state.get("optimizer")
    if optimizer is not None:
        scalars = optimizer.get("scalars") if isinstance(optimizer, dict) else None
        if not (isinstance(scalars, dict) and all(
                isinstance(k, str) and k.isdigit() and isinstance(v, dict)
                and all(_number(x, -math.inf) for x in v.values()) for k, v in scalars.items())
                and isinstance(optimizer.get("param_groups"), list)):
            return "has no valid 'optimizer' settings"
    return None


def remove_unfinished_run(run_dir: Path) -> None:
    """Delete the run files in ``run_dir`` of a run fewshot started and will never finish
    (a trial of an interrupted search; its killed process left its lock file too), then
    the folder if that leaves it empty."""
    if not run_dir.is_dir():
        return
    for path in run_dir.iterdir():
        if RUN_FILE.match(path.name) or LEFTOVER.match(path.name) or path.name == LOCK_NAME:
            path.unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:  # something else is in it: not ours to remove
        pass


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


def pretrained_from_run(run_dir: str | Path, path: str | Path | None = None, which: str = "best",
                        metadata: dict | None = None) -> Pretrained:
    """A trained run's backbone and head as a :class:`Pretrained` (saved to ``path`` if given),
    its metadata filled from the run's config: architecture, source data, objective."""
    config, method, state = load_run(run_dir, which)
    image_shape = state.get("image_shape")
    source = {"dataset": config.dataset, "dataset_options": config.dataset_options, "split": config.train_split,
              "run": str(Path(run_dir).resolve()), "steps": state.get("step"), "seed": config.seed}
    classes = method.source_classes()
    if classes is not None:
        source["num_classes"] = len(classes)
        if all(c >= 0 for c in classes):
            source["classes"] = classes
    meta = {"architecture": config.backbone, "architecture_options": config.backbone_options,
            "training": {"method_options": config.method_options, "episodes": config.episodes, "lr": config.lr,
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
    path = Path(path)
    if (path / "state.json").exists():
        return load_run(path, which)[1]
    return load_pretrained(path)


def finetune_from(path: str | Path, strategy: str = "finetune", which: str = "best", **options: Any) -> FineTune:
    """A :class:`~fewshot.methods.transfer.FineTune` (``strategy``) around the backbone
    of a run folder or a pre-trained model file."""
    return wrap(load_adaptable(path, which), strategy, **options)


__all__ = ["CUSTOM_BACKBONE", "LEFTOVER", "RUN_FILE", "WHICH", "build_model", "conv4_depth", "describe_module",
           "finetune_from", "load_adaptable", "load_run", "load_weights", "pretrained_from_run", "read_state",
           "remove_unfinished_run"]
