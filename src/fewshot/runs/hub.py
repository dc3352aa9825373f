"""A Hugging Face backbone opened as a model: ``hf:<folder or hub id>``, no run folder.

:meth:`fewshot.runs.Run.open` gives a :class:`HubSource` for a name with the ``hf:``
prefix; its :meth:`~HubSource.load` is the backbone with its own preprocessing and
classifier head (:func:`fewshot.models.hub.load_backbone`). It has no method of its own:
what it predicts with is a test-time head on its features (:mod:`fewshot.heads`),
SimpleShot's nearest centroid unless one is named (:data:`DEFAULT_HEAD`).
:func:`features_of` gives the feature extractor of anything :meth:`Run.open` opens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..evaluate import MethodFeatures
from ..models.hub import HubModel, is_hub_name, load_backbone
from .model import Loaded, Protocol

#: The head a Hugging Face backbone predicts with when none is named: SimpleShot's
#: CL2N nearest centroid (Wang et al. 2019, arXiv:1911.04623), which needs no training.
DEFAULT_HEAD = "simpleshot"


class HubSource:
    """``hf:<folder or hub id>`` as :meth:`fewshot.runs.Run.open` gives it (see the module docstring)."""

    #: What a result of its features is recorded as (with the head: ``hf+simpleshot``).
    label = "hf"
    default_head = DEFAULT_HEAD

    def __init__(self, name: str | Path):
        name = str(name)
        if not is_hub_name(name):
            raise ConfigError(f"a Hugging Face model is named hf:<folder or hub id>, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"HubSource({self.name!r})"

    @property
    def protocol(self) -> Protocol:
        """No protocol of its own: the default test episodes (5-way 1-shot, 15 queries)."""
        return Protocol.of()

    def load(self, which: str = "best", *, backbone: nn.Module | None = None, allow_download: bool = False
             ) -> HubModel:
        """The backbone, its preprocessing and (a classifier's) head; ``which`` is moot (one set of weights)."""
        if backbone is not None:
            raise ConfigError(f"{self.name} is its own backbone; pass no backbone module")
        return load_backbone(self.name, allow_download=allow_download)


def features_of(loaded: Loaded | HubModel) -> tuple[nn.Module, Any, str, Path | None]:
    """``(feature module, preprocessing, label, folder)`` of a loaded model: a Hugging Face
    backbone with its own preprocessing, or a trained method's feature extractor taking the
    images as its dataset stores them (preprocessing None). ``label`` names it in records
    (``hf``, or the method); ``folder`` is a Hugging Face model's folder (None otherwise)."""
    if isinstance(loaded, HubModel):
        return loaded.backbone, loaded.preprocessing, HubSource.label, loaded.folder
    if loaded.method.backbone is None:
        raise ConfigError(f"'{loaded.config.method}' has no backbone to give a head features")
    return MethodFeatures(loaded.method), None, loaded.config.method, None


__all__ = ["DEFAULT_HEAD", "HubSource", "features_of"]
