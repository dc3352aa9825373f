"""The model zoo's index: a folder of pre-trained feature extractors that model selection ranks.

A zoo is a folder::

    zoo.json              the index: one entry per model (architecture, size, objective, source, hashes)
    NAME.safetensors      the model's weights     } written by
    NAME.json             its metadata            } models.pretrained.save_pretrained
    runs/NAME/            the training run of a model ``fewshot zoo build`` made (:mod:`.recipes`)

Every model is a :mod:`fewshot.models.pretrained` model, so its metadata says what it is
(architecture and options, parameter count, feature width, input image shape), where it
came from (source dataset, split, classes) and how it was trained (objective).

**Safety.** Nothing read from the zoo names code to run: a network is rebuilt only from
fewshot's built-in backbones, the Hugging Face backbones of the ``hub`` extra, or an
architecture the user registered in Python
(:func:`~fewshot.models.pretrained.register_architecture`). The index records the SHA-256
of both the weights and the metadata file, and every load checks both, so an edited
``NAME.json`` is refused like edited weights. Model names are checked on the way in and
whenever the index is read (no ``../``), and ``zoo`` is reserved (its files would be the
index). :meth:`Zoo.add` builds and checks the new files in a private staging folder and
only then moves them into place under the zoo's lock: a refused add, ``--overwrite``
included, changes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from torch import nn

from ..errors import CheckpointError, ConfigError, FewShotError
from ..io import atomic_path, read_json, require_folder, write_json
from ..models.backbones import feature_dim
from ..models.hub import HUB_PREFIX, load_backbone
from ..methods import Method
from ..models.pretrained import (Pretrained, check_image_shape, count_parameters, describe_architecture,
                                 known_architecture, load_pretrained, read_metadata, save_pretrained)
from ..runs import Run, pretrained_from_run
from ..runs.exported import is_export

FORMAT = "fewshot-zoo"
VERSION = 2  # 2: entries hash their metadata file too ("metadata_sha256")
INDEX = "zoo.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,79}$")
#: Names a model may not take: their files would be the zoo's own (``zoo.json`` is the index).
RESERVED = frozenset({Path(INDEX).stem.lower()})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def check_name(name: object) -> str:
    """``name`` if it may name a zoo model (letters, digits, ``_.+-``; not reserved), else a ConfigError."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ConfigError(f"zoo model name {str(name)[:100]!r} must be letters, digits and _.+- (at most 80 "
                          f"characters, no '..')")
    if name.lower() in RESERVED:
        raise ConfigError(f"'{name}' is reserved ({INDEX} is the zoo's index); choose another name")
    return name


def bn_mode(metadata: dict) -> str:
    """How a zoo model's BatchNorm runs on a new task: ``"batch"`` when its objective is a
    method whose ``test_mode`` is ``"train"`` (the MAML family: its running statistics were
    never trained), else ``"eval"``; a ``"bn"`` field in the metadata overrides."""
    from ..methods import METHODS

    if metadata.get("bn") in ("eval", "batch"):
        return metadata["bn"]
    method = METHODS.get(metadata.get("objective") or "")
    return "batch" if method is not None and method.test_mode == "train" else "eval"


class Zoo:
    """A folder of pre-trained models with a JSON index (see the module docstring).

    ``Zoo(folder)`` opens an existing zoo; ``create=True`` makes an empty one if there is
    none. ``len(zoo)``, ``name in zoo`` and ``zoo.names()`` describe it; :meth:`load`
    gives a model as a :class:`~fewshot.models.pretrained.Pretrained`.
    """

    def __init__(self, root: str | Path, create: bool = False):
        self.root = require_folder(root, "the zoo folder (--zoo, $FEWSHOT_ZOO)")
        self.index_path = self.root / INDEX
        if not self.index_path.exists():
            if not create:
                raise ConfigError(f"{self.root} is not a model zoo (no {INDEX}); make one with `fewshot zoo build "
                                  f"--zoo {self.root}` or add a model with `fewshot zoo add`")
            self.root.mkdir(parents=True, exist_ok=True)
            with self._locked():
                if not self.index_path.exists():
                    write_json(self.index_path, {"format": FORMAT, "version": VERSION, "models": {}})
        self._index()  # fail early on a damaged index

    # -- the index -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Read-modify-write of the index by several processes: serialise with an advisory lock.
        with open(self.root / ".zoo.lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _index(self) -> dict:
        index = read_json(self.index_path)
        if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("models"), dict):
            raise CheckpointError(f"{self.index_path} is not a fewshot zoo index")
        for name, entry in index["models"].items():
            try:
                check_name(name)
            except ConfigError:
                raise CheckpointError(f"{self.index_path} names a model {name[:100]!r}, which is not a valid zoo "
                                      f"model name (a zoo only reads its own NAME.safetensors files); remove the "
                                      f"entry") from None
            if not isinstance(entry, dict):
                raise CheckpointError(f"{self.index_path}: the entry of '{name}' is not a JSON object")
        return index

    def names(self) -> list[str]:
        return sorted(self._index()["models"])

    def __len__(self) -> int:
        return len(self._index()["models"])

    def __contains__(self, name: object) -> bool:
        return name in self._index()["models"]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def entry(self, name: str) -> dict:
        """The index entry of ``name``: architecture, parameters, feature_dim, objective, source, hashes."""
        models = self._index()["models"]
        if name not in models:
            raise ConfigError(f"no model '{name}' in the zoo {self.root}; it has: "
                              f"{', '.join(sorted(models)) or 'none'}")
        return {"name": name, **models[name]}

    def entries(self) -> list[dict]:
        models = self._index()["models"]
        return [{"name": n, **models[n]} for n in sorted(models)]

    def paths(self, name: str) -> tuple[Path, Path]:
        check_name(name)
        return self.root / f"{name}.safetensors", self.root / f"{name}.json"

    def metadata(self, name: str) -> dict:
        self.entry(name)
        return read_metadata(self.paths(name)[0]) or {}

    def fingerprint(self, name: str) -> str:
        """One hash of the model's weights and metadata (what the meta-dataset's rows depend on)."""
        entry = self.entry(name)
        return hashlib.sha256(f"{entry.get('sha256')}:{entry.get('metadata_sha256')}".encode()).hexdigest()

    # -- loading and checking --------------------------------------------------------------------

    def load(self, name: str) -> Pretrained:
        """Model ``name``, checked against its hashes and metadata; a mismatch is a one-line CheckpointError."""
        entry = self.entry(name)
        weights, sidecar = self.paths(name)
        try:
            if not sidecar.exists():
                raise CheckpointError(f"{sidecar.name} is missing")
            return load_checked(weights, entry.get("sha256"), entry.get("metadata_sha256"))
        except FewShotError as e:
            raise CheckpointError(f"zoo entry '{name}': {_one_line(e)}") from None

    def check(self, name: str) -> None:
        """Raise a one-line CheckpointError if the files of ``name`` do not match its index entry."""
        self.load(name)

    # -- adding ------------------------------------------------------------------------------

    def add(self, name: str, source: Any, *, metadata: dict | None = None, metadata_file: str | Path | None = None,
            image_shape: Sequence[int] | None = None, overwrite: bool = False) -> dict:
        """Add a model; returns its index entry.

        ``source`` is a ``fewshot train`` run folder, a Hugging Face ``save_pretrained``
        folder (extra ``hub``), a pre-trained ``.safetensors`` file (metadata from
        ``metadata_file``, else its ``.json`` sidecar, else its header), a
        :class:`~fewshot.models.pretrained.Pretrained`, or an ``nn.Module`` (then
        ``image_shape`` is needed, and a class that is not a built-in backbone must be
        registered with :func:`~fewshot.models.pretrained.register_architecture`).
        ``metadata`` adds or overrides fields. The files are made and checked in a staging
        folder first; if anything fails, the zoo is left exactly as it was.
        """
        check_name(name)
        if name in self and not overwrite:
            raise ConfigError(f"the zoo {self.root} already has a model '{name}'; choose another name "
                              f"(or overwrite it)")
        if metadata is not None and not isinstance(metadata, dict):
            raise ConfigError(f"zoo metadata must be a dict, got {type(metadata).__name__}")
        staging = Path(tempfile.mkdtemp(prefix=".add-", dir=self.root))
        try:
            weights, sidecar = staging / f"{name}.safetensors", staging / f"{name}.json"
            try:
                self._stage(source, weights, sidecar, dict(metadata or {}), metadata_file, image_shape)
                meta = read_metadata(weights) or {}
                if not meta.get("image_shape"):
                    raise CheckpointError(f"{Path(str(source)).name}: its metadata lacks image_shape (channels, "
                                          f"height, width); a zoo model must say what images it takes")
                load_checked(weights, None, None)
            except FewShotError as e:
                # Say the files by their names: the staging folder is no path of the user's.
                said = _one_line(e).replace(f"{staging}{os.sep}", "").replace(str(staging), "the zoo")
                raise type(e)(f"cannot add '{name}' to the zoo: {said}") from None
            entry = {
                "file": f"{name}.safetensors", "sha256": sha256_file(weights), "metadata_sha256": sha256_file(sidecar),
                "added": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "architecture": meta.get("architecture"), "parameters": meta.get("parameters"),
                "feature_dim": meta.get("feature_dim"), "image_shape": meta.get("image_shape"),
                "objective": meta.get("objective"), "source": _source_label(meta.get("source") or {}),
            }
            with self._locked():
                index = self._index()
                if name in index["models"] and not overwrite:
                    raise ConfigError(f"the zoo {self.root} already has a model '{name}' (added meanwhile)")
                final_weights, final_sidecar = self.paths(name)
                # Each rename is atomic; the index (written last) names the new hashes. A crash
                # between them leaves files whose hashes the index does not name: the entry is
                # then refused on load ("add it again"), never silently used.
                os.replace(weights, final_weights)
                os.replace(sidecar, final_sidecar)
                index["models"][name] = entry
                index["version"] = VERSION
                write_json(self.index_path, index)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # the staging folder is ours alone
        return {"name": name, **entry}

    def _stage(self, source: Any, weights: Path, sidecar: Path, extra: dict, metadata_file: str | Path | None,
               image_shape: Sequence[int] | None) -> None:
        """Write the model's files as ``weights`` and ``sidecar`` (in the staging folder)."""
        if image_shape is not None:
            image_shape = check_image_shape(list(image_shape), "image_shape")
        def stage_hub(name: str | Path) -> None:
            # Offline, schema-checked, refused unless every backbone weight is in the files;
            # a classifier's head is kept (LEEP and NCE read it).
            hub = load_backbone(name, image_shape=image_shape)
            save_pretrained(hub.backbone, weights, {**hub.metadata, **extra}, image_shape=hub.backbone.image_shape,
                            head=hub.head)

        if isinstance(source, str) and source.startswith(HUB_PREFIX):  # hf:<folder or cached hub id>, as predict takes it
            stage_hub(source)
        elif isinstance(source, (str, Path)):
            path = Path(source)
            if Run.is_run(path) or is_export(path):  # a run folder, or any form `fewshot export` writes
                pretrained_from_run(path, weights, metadata=extra)
            elif path.is_dir():
                if (path / "config.json").exists():
                    stage_hub(path)
                else:
                    raise CheckpointError(f"{path} is a folder but neither a fewshot run nor a "
                                          f"Hugging Face save_pretrained folder (no config.json)")
            else:
                _stage_file(path, weights, sidecar, extra, metadata_file, image_shape)
        elif isinstance(source, Pretrained):
            save_pretrained(source.backbone, weights, {**source.metadata, **extra}, head=source.head,
                            image_shape=image_shape or source.metadata.get("image_shape"))
        elif isinstance(source, nn.Module):
            if image_shape is None:
                raise ConfigError("adding an nn.Module to the zoo needs image_shape=(channels, height, width)")
            backbone, head, objective = ((source.backbone, source.head, source.name) if isinstance(source, Method)
                                         else (source, None, None))
            arch, _ = describe_architecture(backbone)
            if "architecture" not in extra and not known_architecture(arch):
                raise ConfigError(f"{type(backbone).__name__} is not a built-in backbone; register it first, "
                                  f"fewshot.models.register_architecture('name', {type(backbone).__name__}), so "
                                  f"the zoo can rebuild it (nothing in a zoo file may name code to import)")
            save_pretrained(backbone, weights, extra, image_shape=image_shape, head=head, objective=objective)
        else:
            raise ConfigError(f"cannot add a {type(source).__name__} to the zoo: give a run folder, a "
                              f".safetensors file, a Pretrained or an nn.Module")


def _stage_file(path: Path, weights: Path, sidecar: Path, extra: dict, metadata_file: str | Path | None,
                image_shape: Sequence[int] | None) -> None:
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors") if not path.exists() else path
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; give a run folder or a .safetensors file")
    if metadata_file:
        meta = read_json(metadata_file)
        if not isinstance(meta, dict):
            raise CheckpointError(f"{metadata_file} is not a JSON object of metadata")
    else:
        meta = dict(read_metadata(path) or {})
    if not meta and not extra:
        raise CheckpointError(f"{path} comes without metadata; give a JSON file of it (architecture, "
                              f"architecture_options, image_shape, ...)")
    meta = {**meta, **extra}
    if image_shape is not None:
        meta["image_shape"] = list(image_shape)
    # Refuse what cannot be a model before copying anything.
    meta["image_shape"] = check_image_shape(meta.get("image_shape"), path.name)
    meta.setdefault("format", "fewshot-pretrained")
    meta.setdefault("version", 1)
    with atomic_path(weights) as tmp:
        shutil.copyfile(path, tmp)
    # Fill in what the metadata leaves out (feature width, parameter count) from the network itself.
    if meta.get("feature_dim") is None or meta.get("parameters") is None:
        write_json(sidecar, meta)
        backbone = load_checked(weights, None, None, fill=True).backbone
        if meta.get("parameters") is None:
            meta["parameters"] = count_parameters(backbone)
        if meta.get("feature_dim") is None:
            meta["feature_dim"] = _feature_width(backbone, meta["image_shape"], weights)
    write_json(sidecar, meta)


def _source_label(source: dict) -> str:
    if not isinstance(source, dict) or not source:
        return "none"
    label = str(source.get("dataset", "?"))
    group = source.get("group") or source.get("split")
    return f"{label}:{group}" if group else label


def _feature_width(backbone: nn.Module, shape: Sequence[int], weights: Path) -> int:
    try:
        return feature_dim(backbone, shape)
    except Exception as e:  # noqa: BLE001 - a network that cannot take its own image shape
        raise CheckpointError(f"{weights.name}: the network does not take {'x'.join(map(str, shape))} "
                              f"images, its metadata's image_shape ({type(e).__name__}: {_one_line(e)[:200]})") from None


def load_checked(weights: Path, sha256: str | None, metadata_sha256: str | None, fill: bool = False) -> Pretrained:
    """Load a zoo model's files, checking their hashes (when given) and the metadata's
    feature width against the network's; every mismatch is a one-line CheckpointError."""
    _, sidecar = weights.with_suffix(""), weights.with_suffix(".json")
    if sha256 is not None and weights.exists() and sha256_file(weights) != sha256:
        raise CheckpointError(f"{weights.name} changed since it was added (its hash differs from the index); "
                              f"add it again")
    if metadata_sha256 is not None and sidecar.exists() and sha256_file(sidecar) != metadata_sha256:
        raise CheckpointError(f"{sidecar.name} changed since it was added (its hash differs from the index); "
                              f"add the model again")
    meta = read_metadata(weights) or {}
    if meta.get("image_shape") is not None:
        check_image_shape(meta["image_shape"], weights.name)
    model = load_pretrained(weights)
    shape = meta.get("image_shape")
    if shape and not fill:
        width = _feature_width(model.backbone, shape, weights)
        if meta.get("feature_dim") is not None and width != meta["feature_dim"]:
            raise CheckpointError(f"{weights.name}: the network gives {width} features, its metadata says "
                                  f"{meta['feature_dim']}; the files do not belong together")
    return model


__all__ = ["FORMAT", "INDEX", "RESERVED", "VERSION", "Zoo", "bn_mode", "check_name", "load_checked", "sha256_file"]
