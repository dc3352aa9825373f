"""Exported models: one trained method, its settings and preprocessing, to ship.

An exported model is either

* a file ending in ``.safetensors``: one safetensors file whose header metadata holds
  the description (key ``fewshot``, a JSON string), or
* a folder in the Hugging Face ``save_pretrained`` layout: ``config.json`` (the
  description) and ``model.safetensors`` (the weights, their header holding the same
  description).

The description holds the training config (method and its options, backbone and its
options), the input preprocessing, the probability calibration, the transfer strategy
(if any) and where the weights came from. Nothing is pickled and nothing read names
code to run.

Writing never overwrites what fewshot did not write: an existing file must be an
exported fewshot model, an existing folder empty or an exported fewshot model folder.
A file is replaced in one rename; a folder is written whole beside the old one and
exchanged with it in one rename (:func:`fewshot.io.atomic_folder`), so a crash leaves
the old model or the new one, never the new weights beside the old description.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import TrainConfig
from ..errors import CheckpointError, ConfigError, FewShotError
from ..io import atomic_folder, atomic_path, load_tensors, parse_json, read_bounded, save_tensors, write_json
from .model import Loaded, build_checked, preprocessing_from
from .schema import check_description

FORMAT = "fewshot-model"
FORMAT_VERSION = 1
HEADER_KEY = "fewshot"
WEIGHTS = "model.safetensors"
DESCRIPTION = "config.json"
#: The most bytes of a description read: it is a few kilobytes of JSON.
MAX_DESCRIPTION = 1 << 20
#: The files of an exported model folder, and the temporaries of their writes.
FOLDER_FILE = re.compile(r"^\.?(model\.safetensors|config\.json|README\.md)(\.\w+\.tmp)?$")
#: The model card of a Hugging Face export (``fewshot export --format hf``).
CARD = "README.md"


def _peek(path: Path) -> Any:
    """The JSON of a small file, or None when it cannot be read as such."""
    try:
        return parse_json(read_bounded(path, MAX_DESCRIPTION), str(path))
    except FewShotError:
        return None


def folder_kind(path: str | Path) -> str | None:
    """What a folder holds, by its layout and its ``config.json``: ``"export"`` (an
    exported fewshot model, or a damaged one), ``"hub"`` (a Hugging Face model folder)
    or None."""
    path = Path(path)
    if not path.is_dir() or not (path / DESCRIPTION).is_file():
        return None
    described = _peek(path / DESCRIPTION)
    if isinstance(described, dict) and described.get("format") != FORMAT and "model_type" in described:
        return "hub"
    return "export" if (path / WEIGHTS).is_file() else None


def is_model_file(path: str | Path) -> bool:
    """Whether ``path`` is an exported model (either form), by its layout."""
    path = Path(path)
    if path.is_dir():
        return folder_kind(path) == "export"
    return path.is_file() and path.suffix == ".safetensors"


def write_model(out: str | Path, description: dict[str, Any], weights: dict[str, torch.Tensor],
                extra: dict[str, torch.Tensor] | None = None, *, card: str | None = None) -> Path:
    """Write an exported model (see the module docstring for the two forms); returns ``out``.
    ``extra``: tensors stored under their own names beside the ``model.*`` weights (a fitted
    learner's support set, ``fitted.*``), which :func:`read_model` leaves out of the weights.
    ``card``: a model card (Markdown), written as the folder's ``README.md`` (folders only)."""
    out = Path(out)
    description = {"format": FORMAT, "format_version": FORMAT_VERSION, "fewshot_version": __version__, **description}
    text = json.dumps(description, sort_keys=True)
    tensors = {**{f"model.{k}": v for k, v in weights.items()}, **(extra or {})}
    if out.suffix == ".safetensors":
        if card is not None:
            raise ConfigError(f"{out}: a model card needs the folder form; give --out a folder name")
        _check_file_target(out)
        save_tensors(out, tensors, metadata={HEADER_KEY: text})
        return out
    _check_folder_target(out)
    with atomic_folder(out, FOLDER_FILE) as staging:
        save_tensors(staging / WEIGHTS, tensors, metadata={HEADER_KEY: text})
        write_json(staging / DESCRIPTION, description)
        if card is not None:
            with atomic_path(staging / CARD) as tmp:
                tmp.write_text(card, encoding="utf-8")
    return out


def _check_file_target(out: Path) -> None:
    """Refuse to replace anything but an exported fewshot model file."""
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; give a file name ending in .safetensors, or a folder name without it")
    if out.is_symlink() or (out.exists() and not _is_export_file(out)):
        raise ConfigError(f"{out} exists and is not a model fewshot exported; fewshot replaces only its own "
                          "exports: choose another --out (or move that file away first)")


def _check_folder_target(out: Path) -> None:
    """Refuse to replace anything but an empty folder or an exported fewshot model folder."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"{out} exists and is not a folder; give a new folder name or a .safetensors file name")
    if not out.is_dir():
        return
    # An old writer's leftover temporaries are fewshot's own (removed with the old folder).
    names = sorted(p.name for p in out.iterdir() if not (p.name.startswith(".") and FOLDER_FILE.match(p.name)))
    if names and not (set(names) - {CARD} == {WEIGHTS, DESCRIPTION} and folder_kind(out) == "export"
                      and isinstance(described := _peek(out / DESCRIPTION), dict)
                      and described.get("format") == FORMAT):
        raise ConfigError(f"{out} holds files fewshot did not export ({names[0]}, ...); fewshot replaces only an "
                          "empty folder or its own export: choose a new or empty --out folder")


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is something fewshot exported: a model file whose header holds a
    fewshot description, or an exported model folder (either format)."""
    path = Path(path)
    if path.is_dir():
        return folder_kind(path) == "export"
    return path.is_file() and path.suffix == ".safetensors" and _is_export_file(path)


def _is_export_file(path: Path) -> bool:
    try:
        described = parse_json(_header_text(path), str(path))
    except FewShotError:
        return False
    return isinstance(described, dict) and described.get("format") == FORMAT


def read_model(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """The description and ``model.*`` weights of an exported model, and its weights file."""
    path = Path(path)
    if path.is_dir():
        if not is_model_file(path):
            raise CheckpointError(f"{path} is not an exported model ({DESCRIPTION} + {WEIGHTS}); make one with "
                                  f"`fewshot export RUN --out {path}`")
        weights_file = path / WEIGHTS
        text = read_bounded(path / DESCRIPTION, MAX_DESCRIPTION).decode("utf-8", errors="replace")
        label = f"{path / DESCRIPTION}"
    elif path.is_file():
        weights_file = path
        text = _header_text(path)
        label = f"{path}: its description"
    else:
        raise CheckpointError(f"{path} does not exist; give a run folder or an exported model")
    description = parse_json(text, label, CheckpointError)
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fewshot model (no '{FORMAT}' description); "
                              "export one with `fewshot export RUN --out FILE.safetensors`")
    if description.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has model format version {description.get('format_version')!r}; this fewshot "
                              f"reads version {FORMAT_VERSION}")
    check_description(description, label)
    tensors = load_tensors(weights_file)
    weights = {k: v for k, v in tensors.items() if k.startswith("model.")}
    return description, weights, weights_file


def _header_text(path: Path) -> str:
    """The ``fewshot`` entry of a safetensors file's header metadata (the header alone is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    text = metadata.get(HEADER_KEY)
    if text is None:
        raise CheckpointError(f"{path} holds weights but no fewshot description; it is not an exported fewshot "
                              "model (a zoo model? use `fewshot zoo add` or fewshot.runs.load_adaptable)")
    if len(text) > MAX_DESCRIPTION:
        raise CheckpointError(f"{path}: its description is larger than a model description can be")
    return text


class Exported:
    """An exported model, read as :meth:`fewshot.runs.Run.open` reads any trained model."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Exported({str(self.path)!r})"

    def load(self, which: str = "best", *, backbone: torch.nn.Module | None = None) -> Loaded:
        """The exported method with its weights (an export holds one set: ``which`` is moot)."""
        description, weights, weights_file = read_model(self.path)
        config = TrainConfig.from_dict(description.get("config"))
        prep = preprocessing_from(description.get("preprocessing"), description.get("image_shape"))
        method = build_checked(config, prep.image_shape, weights, weights_file, backbone=backbone)
        return Loaded(config, method, list(prep.image_shape), description.get("preprocessing"),
                      description.get("calibration"), description.get("source") or {}, weights_file,
                      strategy=description.get("strategy") or None)


__all__ = ["CARD", "DESCRIPTION", "Exported", "FORMAT", "FORMAT_VERSION", "WEIGHTS", "folder_kind", "is_export", "is_model_file",
           "read_model", "write_model"]
