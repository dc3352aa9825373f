"""A training checkpoint's contents: weights, optimiser, schedule and loss scaler.

Tensors go to the checkpoint file (``model.*`` the weights, ``optim.INDEX.NAME`` the
optimiser's per-parameter tensors, ``rng.*`` the random streams); the optimiser's plain
settings, the learning-rate schedule and the loss scaler's state go to the run's state,
which names the file. Restoring checks every piece against the freshly built model
first, so a damaged or edited checkpoint fails in one line before training resumes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError


def same_layout(value: Any, template: Any) -> bool:
    """Whether JSON ``value`` has ``template``'s structure (its keys, list lengths and
    kinds of value; finite numbers for numbers), so loading it cannot crash later."""
    if isinstance(template, dict):
        return (isinstance(value, dict) and set(template) <= set(value)
                and all(same_layout(value[k], template[k]) for k in template))
    if isinstance(template, (list, tuple)):
        return (isinstance(value, list) and len(value) == len(template)
                and all(same_layout(v, t) for v, t in zip(value, template)))
    if template is None:  # an optional setting (e.g. Adam's foreach): any plain value
        return value is None or isinstance(value, (bool, int, float, str))
    if isinstance(template, (bool, str)):
        return type(value) is type(template)
    if isinstance(template, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return True


def optimizer_checkpoint(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimiser's tensors (for the checkpoint file) and its plain settings (for the state)."""
    optim = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in optim["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": optim["param_groups"], "scalars": scalars}


def restore_optimizer(state: dict, tensors: dict[str, torch.Tensor], path: Path, label: str,
                      optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any) -> None:
    """Load the optimiser, schedule and (if any) loss scaler of a checkpoint: its tensors
    (from ``path``) and the settings of its ``state`` (read from ``label``)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optim_state = _optimizer_tensors(tensors, path, params)
    for index, values in state["optimizer"]["scalars"].items():
        if int(index) >= len(params):
            raise CheckpointError(f"{label}: optimiser settings name parameter {index}, "
                                  "which the model does not have; the run folder is damaged")
        optim_state.setdefault(int(index), {}).update(values)
    fresh = optimizer.state_dict()["param_groups"]
    groups = state["optimizer"]["param_groups"]
    if not same_layout(groups, fresh):
        raise CheckpointError(f"{label}: the optimiser settings do not fit the model; the run folder is damaged")
    if not same_layout(state["scheduler"], scheduler.state_dict()):
        raise CheckpointError(f"{label}: the learning-rate schedule is damaged")
    try:
        optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: optimiser state does not match the model ({e})") from None
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and isinstance(state.get("scaler"), dict):
        if not same_layout(state["scaler"], scaler.state_dict()):
            raise CheckpointError(f"{label}: the loss-scaler settings are damaged")
        scaler.load_state_dict(state["scaler"])


def _optimizer_tensors(tensors: dict[str, torch.Tensor], path: Path,
                       params: list[torch.nn.Parameter]) -> dict[int, dict[str, Any]]:
    """The checkpoint's ``optim.INDEX.NAME`` tensors, checked against the parameters
    they belong to, so a damaged file fails now, not at the first step."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        _, index, name = (key.split(".", 2) + ["", ""])[:3]
        if not index.isdigit() or int(index) >= len(params) or not name:
            raise CheckpointError(f"{path} holds tensor '{key}', which names no parameter of the model; "
                                  "the checkpoint is damaged")
        expected = () if name == "step" else tuple(params[int(index)].shape)
        if tuple(value.shape) != expected or not value.is_floating_point() or not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: tensor '{key}' has shape {tuple(value.shape)} ({value.dtype}), "
                                  f"not the finite {expected} its parameter needs; the checkpoint is damaged")
        state.setdefault(int(index), {})[name] = value
    return state


__all__ = ["optimizer_checkpoint", "restore_optimizer", "same_layout"]
