"""Models you can ship: one trained method, its settings and preprocessing, in a file.

``export_model(run, out)`` writes either

* ``out`` ending in ``.safetensors``: one safetensors file whose header metadata
  holds the description (key ``fewshot``, a JSON string), or
* any other ``out``: a folder in the Hugging Face ``save_pretrained`` layout,
  ``config.json`` (the description) and ``model.safetensors`` (the weights).

The description holds the training config (method and its options, backbone and its
options), the input preprocessing (:class:`fewshot.images.Preprocessing`), the
probability calibration (:mod:`fewshot.calibration`) and where the weights came from.
:func:`fewshot.load` reads either form without the run folder. Nothing is pickled and
nothing read names code to run: the method and backbone are chosen from fewshot's own
registries by name, and a run of your own backbone needs that module passed again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import CheckpointError, ConfigError
from .io import load_tensors, parse_json, read_bounded, save_tensors, write_json

FORMAT = "fewshot-model"
FORMAT_VERSION = 1
HEADER_KEY = "fewshot"
WEIGHTS = "model.safetensors"
DESCRIPTION = "config.json"
#: The most bytes of a description read: it is a few kilobytes of JSON.
MAX_DESCRIPTION = 1 << 20


def is_model_file(path: str | Path) -> bool:
    """Whether ``path`` is an exported model (either form), by its layout, not its contents."""
    path = Path(path)
    if path.is_dir():
        return (path / WEIGHTS).is_file() and (path / DESCRIPTION).is_file() and not (path / "state.json").exists()
    return path.is_file() and path.suffix == ".safetensors"


def write_model(out: str | Path, description: dict[str, Any], weights: dict[str, torch.Tensor]) -> Path:
    """Write an exported model (see the module docstring for the two forms); returns ``out``."""
    out = Path(out)
    description = {"format": FORMAT, "format_version": FORMAT_VERSION, "fewshot_version": __version__, **description}
    text = json.dumps(description, sort_keys=True)
    tensors = {f"model.{k}": v for k, v in weights.items()}
    if out.suffix == ".safetensors":
        if out.is_dir():
            raise ConfigError(f"{out} is a folder; give a file name ending in .safetensors, or a folder name without it")
        save_tensors(out, tensors, metadata={HEADER_KEY: text})
        return out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; give a new folder name or a .safetensors file name")
    if out.is_dir() and any(p.name not in (WEIGHTS, DESCRIPTION) for p in out.iterdir()):
        raise ConfigError(f"{out} holds other files; export into a new or empty folder")
    save_tensors(out / WEIGHTS, tensors, metadata={HEADER_KEY: text})
    write_json(out / DESCRIPTION, description)
    return out


def read_model(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """The description and ``model.*`` weights of an exported model, and its weights file."""
    path = Path(path)
    if path.is_dir():
        if not is_model_file(path):
            raise CheckpointError(f"{path} is neither a run folder (state.json) nor an exported model "
                                  f"({DESCRIPTION} + {WEIGHTS}); make one with `fewshot export RUN --out {path}`")
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


__all__ = ["FORMAT", "FORMAT_VERSION", "is_model_file", "read_model", "write_model"]
