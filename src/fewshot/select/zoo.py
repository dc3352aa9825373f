"""The model zoo: a folder of pre-trained feature extractors that model selection ranks.

A zoo is a folder::

    zoo.json              the index: one entry per model (architecture, size, objective, source, hash)
    NAME.safetensors      the model's weights     } written by
    NAME.json             its metadata            } models.pretrained.save_pretrained
    runs/NAME/            the training run of a model ``fewshot zoo build`` made

Every model is a :mod:`fewshot.models.pretrained` model, so its metadata says what it is
(architecture and options, parameter count, feature width, input image shape), where it
came from (source dataset, split, classes) and how it was trained (objective). The
index is rewritten atomically under a file lock, so two ``fewshot zoo add`` at once
lose nothing.

Models enter the zoo four ways (:meth:`Zoo.add`): a ``fewshot train`` run folder, a
pre-trained file (``.safetensors`` with its ``.json`` or header metadata), a bare
safetensors file plus a metadata JSON, or, from Python, an ``nn.Module`` (with a
``factory`` that rebuilds it when its class is not a built-in backbone). Every entry is
checked on the way in and on every load: weights that do not fit the metadata (names,
shapes, parameter count, feature width) raise a one-line
:class:`~fewshot.errors.CheckpointError` naming the entry.

:func:`build_zoo` makes the deliberately diverse zoo of issue 6 with fewshot's own
trainer: Conv-4 of three widths, two ResNet-12s, two MLPs; trained on groups of
Omniglot's background alphabets (grouped by script family, :data:`BACKGROUND_GROUPS`)
or on digits; with supervised pre-training (Baseline and Baseline++, Chen et al.
2019), Prototypical Networks (Snell et al. 2017), MAML (Finn et al. 2017), or no
training at all (a randomly initialised control). Big models get the same CPU budget as
small ones, so size alone does not decide which is best for a task. Building is
resumable: models already in the zoo are skipped, and a model whose training was
interrupted resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import CheckpointError, ConfigError, FewShotError
from ..io import atomic_path, read_json, write_json
from ..models.backbones import BACKBONES, build_backbone, feature_dim
from ..models.pretrained import (Pretrained, count_parameters, load_pretrained, read_metadata,
                                 save_pretrained)
from ..methods import Method
from ..runs import pretrained_from_run

FORMAT = "fewshot-zoo"
VERSION = 1
INDEX = "zoo.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,79}$")

#: Objectives whose backbones normalise each batch with its own statistics at test time
#: (the MAML family's transductive convention); every other backbone uses its running ones.
BATCH_NORM_OBJECTIVES = ("maml", "fomaml", "metasgd", "anil", "reptile")

# Omniglot's alphabets grouped by script family, so that models trained on one group and
# tasks drawn from another differ in domain, not only in classes. Background alphabets
# train the zoo; evaluation alphabets give the held-out tasks (select/builder.py).
BACKGROUND_GROUPS: dict[str, tuple[str, ...]] = {
    "bg-asian": ("Balinese", "Bengali", "Burmese_(Myanmar)", "Grantha", "Gujarati", "Sanskrit", "Tagalog",
                 "Japanese_(hiragana)", "Japanese_(katakana)", "Korean"),
    "bg-european": ("Latin", "Greek", "Cyrillic", "Armenian", "Asomtavruli_(Georgian)", "Mkhedruli_(Georgian)",
                    "Anglo-Saxon_Futhorc", "Hebrew", "Early_Aramaic", "Syriac_(Estrangelo)"),
    "bg-other": ("Arcadian", "Blackfoot_(Canadian_Aboriginal_Syllabics)", "Braille", "Futurama",
                 "Inuktitut_(Canadian_Aboriginal_Syllabics)", "Ojibwe_(Canadian_Aboriginal_Syllabics)", "N_Ko",
                 "Tifinagh", "Alphabet_of_the_Magi", "Malay_(Jawi_-_Arabic)"),
}
EVALUATION_GROUPS: dict[str, tuple[str, ...]] = {
    "eval-brahmic": ("Gurmukhi", "Kannada", "Malayalam", "Oriya", "Manipuri", "Sylheti", "Tibetan"),
    "eval-historic": ("Glagolitic", "Old_Church_Slavonic_(Cyrillic)", "Avesta", "Syriac_(Serto)", "Ge_ez",
                      "Mongolian"),
    "eval-invented": ("Angelic", "Atemayar_Qelisayer", "Atlantean", "Aurek-Besh", "Tengwar", "ULOG", "Keble"),
}


def alphabet_splits(dataset, groups: dict[str, Sequence[str]], upright_only: bool = False) -> dict[str, list[int]]:
    """``{group: class ids}`` of an Omniglot :class:`~fewshot.data.ClassDataset` for alphabet groups
    (class names are ``Alphabet/characterNN/rotDDD``); ``upright_only`` keeps the unrotated characters."""
    members = {alphabet: group for group, alphabets in groups.items() for alphabet in alphabets}
    out: dict[str, list[int]] = {group: [] for group in groups}
    for i, name in enumerate(dataset.class_names):
        parts = name.split("/")
        if parts[0] in members and (not upright_only or len(parts) < 3 or parts[2] == "rot000"):
            out[members[parts[0]]].append(i)
    empty = [g for g, ids in out.items() if not ids]
    if empty:
        raise ConfigError(f"{dataset.name} has no classes of alphabet group(s) {', '.join(empty)}; "
                          f"alphabet groups need Omniglot")
    return out


# -- the registry ------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def bn_mode(metadata: dict) -> str:
    """How a zoo model's BatchNorm runs on a new task: ``"batch"`` for the MAML family's
    backbones (their running statistics were never trained), else ``"eval"``; a ``"bn"``
    field in the metadata overrides."""
    if metadata.get("bn") in ("eval", "batch"):
        return metadata["bn"]
    return "batch" if metadata.get("objective") in BATCH_NORM_OBJECTIVES else "eval"


class Zoo:
    """A folder of pre-trained models with a JSON index (see the module docstring).

    ``Zoo(folder)`` opens an existing zoo; ``create=True`` makes an empty one if there is
    none. ``len(zoo)``, ``name in zoo`` and ``zoo.names()`` describe it; :meth:`load`
    gives a model as a :class:`~fewshot.models.pretrained.Pretrained`.
    """

    def __init__(self, root: str | Path, create: bool = False):
        self.root = Path(root)
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
        """The index entry of ``name``: architecture, parameters, feature_dim, objective, source, sha256."""
        models = self._index()["models"]
        if name not in models:
            raise ConfigError(f"no model '{name}' in the zoo {self.root}; it has: "
                              f"{', '.join(sorted(models)) or 'none'}")
        return {"name": name, **models[name]}

    def entries(self) -> list[dict]:
        models = self._index()["models"]
        return [{"name": n, **models[n]} for n in sorted(models)]

    def paths(self, name: str) -> tuple[Path, Path]:
        return self.root / f"{name}.safetensors", self.root / f"{name}.json"

    def metadata(self, name: str) -> dict:
        self.entry(name)
        return read_metadata(self.paths(name)[0]) or {}

    # -- loading and checking --------------------------------------------------------------------

    def load(self, name: str) -> Pretrained:
        """Model ``name``, checked against its metadata; a mismatch is a one-line CheckpointError."""
        entry = self.entry(name)
        weights, _ = self.paths(name)
        try:
            return _load_checked(weights, entry.get("sha256"))
        except FewShotError as e:
            raise CheckpointError(f"zoo entry '{name}': {_one_line(e)}") from None

    def check(self, name: str) -> None:
        """Raise a one-line CheckpointError if the weights of ``name`` do not match its metadata."""
        self.load(name)

    # -- adding ------------------------------------------------------------------------------

    def add(self, name: str, source: Any, *, metadata: dict | None = None, metadata_file: str | Path | None = None,
            image_shape: Sequence[int] | None = None, factory: str | None = None,
            factory_options: dict | None = None, overwrite: bool = False) -> dict:
        """Add a model; returns its index entry.

        ``source`` is a ``fewshot train`` run folder, a pre-trained ``.safetensors`` file
        (metadata from ``metadata_file``, else its ``.json`` sidecar, else its header), a
        :class:`~fewshot.models.pretrained.Pretrained`, or an ``nn.Module`` (then
        ``image_shape`` is needed, and for a class that is not a built-in backbone a
        ``factory`` "module:callable", called with ``factory_options``, that rebuilds it;
        by default its own class, called with no arguments). ``metadata`` adds or
        overrides fields. The entry is checked before it is registered; if the check
        fails nothing is left behind.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"zoo model name {name!r} must be letters, digits and _.+- (at most 80 characters)")
        if name in self and not overwrite:
            raise ConfigError(f"the zoo {self.root} already has a model '{name}'; choose another name")
        weights, sidecar = self.paths(name)
        extra = dict(metadata or {})
        if factory or factory_options:
            extra.update(factory=factory, factory_options=factory_options or {})
        try:
            if isinstance(source, (str, Path)):
                path = Path(source)
                if path.is_dir():
                    if not (path / "state.json").exists():
                        raise CheckpointError(f"{path} is a folder but not a fewshot run (no state.json)")
                    pretrained_from_run(path, weights, metadata=extra)
                else:
                    self._add_file(path, weights, sidecar, extra, metadata_file, image_shape)
            elif isinstance(source, Pretrained):
                save_pretrained(source.backbone, weights, {**source.metadata, **extra}, head=source.head,
                                image_shape=image_shape or source.metadata.get("image_shape"))
            elif isinstance(source, nn.Module):
                if image_shape is None:
                    raise ConfigError("adding an nn.Module to the zoo needs image_shape=(channels, height, width)")
                backbone, head, objective = ((source.backbone, source.head, source.name) if isinstance(source, Method)
                                             else (source, None, None))
                cls = type(backbone)
                if cls.__module__.split(".")[0] != "fewshot" and "factory" not in extra:
                    extra.update(factory=f"{cls.__module__}:{cls.__qualname__}", factory_options={})
                save_pretrained(backbone, weights, extra, image_shape=image_shape, head=head, objective=objective)
            else:
                raise ConfigError(f"cannot add a {type(source).__name__} to the zoo: give a run folder, a "
                                  f".safetensors file, a Pretrained or an nn.Module")
            meta = read_metadata(weights) or {}
            if not meta.get("image_shape"):
                raise CheckpointError(f"{weights.name}: its metadata lacks image_shape (channels, height, width); "
                                      f"a zoo model must say what images it takes")
            _load_checked(weights, None)
        except FewShotError as e:
            weights.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            raise type(e)(f"cannot add '{name}' to the zoo: {_one_line(e)}") from None
        entry = {
            "file": weights.name, "sha256": _sha256(weights), "added": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "architecture": meta.get("architecture"), "parameters": meta.get("parameters"),
            "feature_dim": meta.get("feature_dim"), "image_shape": meta.get("image_shape"),
            "objective": meta.get("objective"), "source": _source_label(meta.get("source") or {}),
        }
        with self._locked():
            index = self._index()
            index["models"][name] = entry
            write_json(self.index_path, index)
        return {"name": name, **entry}

    def _add_file(self, path: Path, weights: Path, sidecar: Path, extra: dict, metadata_file: str | Path | None,
                  image_shape: Sequence[int] | None) -> None:
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors") if not path.exists() else path
        if not path.exists():
            raise CheckpointError(f"{path} is missing; give a run folder or a .safetensors file")
        meta = dict(read_json(metadata_file)) if metadata_file else dict(read_metadata(path) or {})
        if not meta and not extra:
            raise CheckpointError(f"{path} comes without metadata; give a JSON file of it (architecture, "
                                  f"architecture_options, image_shape, ...)")
        meta.update(extra)
        if image_shape is not None:
            meta["image_shape"] = list(image_shape)
        meta.setdefault("format", "fewshot-pretrained")
        meta.setdefault("version", 1)
        with atomic_path(weights) as tmp:
            shutil.copyfile(path, tmp)
        # Fill in what the metadata leaves out (feature width, parameter count) from the network itself.
        if meta.get("image_shape") and (meta.get("feature_dim") is None or meta.get("parameters") is None):
            write_json(sidecar, meta)
            backbone = _load_checked(weights, None, fill=True).backbone
            meta.setdefault("parameters", count_parameters(backbone))
            if meta.get("feature_dim") is None:
                meta["feature_dim"] = feature_dim(backbone, meta["image_shape"])
        write_json(sidecar, meta)


def _source_label(source: dict) -> str:
    if not source:
        return "none"
    label = str(source.get("dataset", "?"))
    group = source.get("group") or source.get("split")
    return f"{label}:{group}" if group else label


def _rebuild(meta: dict) -> nn.Module | None:
    """The network the metadata describes, for a user's module with a ``factory``; None
    for built-in architectures (load_pretrained rebuilds those)."""
    if meta.get("architecture") in BACKBONES:
        return None
    factory = meta.get("factory")
    if not factory:
        return None  # load_pretrained says a module is needed
    module_name, _, attr = str(factory).partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
        return target(**(meta.get("factory_options") or {}))
    except Exception as e:  # noqa: BLE001 - any import or constructor failure is the user's factory
        raise CheckpointError(f"cannot rebuild the network with its factory '{factory}' "
                              f"({type(e).__name__}: {_one_line(e)})") from None


def _load_checked(weights: Path, sha256: str | None, fill: bool = False) -> Pretrained:
    if sha256 is not None and weights.exists() and _sha256(weights) != sha256:
        raise CheckpointError(f"{weights.name} changed since it was added (its hash differs from the index); "
                              f"add it again")
    meta = read_metadata(weights) or {}
    model = load_pretrained(weights, module=_rebuild(meta))
    shape = meta.get("image_shape")
    if shape and not fill:
        try:
            width = feature_dim(model.backbone, shape)
        except Exception as e:  # noqa: BLE001 - a network that cannot take its own image shape
            raise CheckpointError(f"{weights.name}: the network does not take {'x'.join(map(str, shape))} "
                                  f"images, its metadata's image_shape ({type(e).__name__}: {_one_line(e)})") from None
        if meta.get("feature_dim") is not None and width != meta["feature_dim"]:
            raise CheckpointError(f"{weights.name}: the network gives {width} features, its metadata says "
                                  f"{meta['feature_dim']}; the files do not belong together")
    return model


# -- building the diverse zoo ---------------------------------------------------------------------

@dataclass
class ZooSpec:
    """One model of a zoo to build: backbone, source data, objective, training shape.

    ``source`` is ``"omniglot:GROUP"`` (a group of :data:`BACKGROUND_GROUPS`, with
    rotations as classes) or ``"digits"`` (digits 0-4 and their rotations).
    ``objective`` is a trainable method name (``baseline``, ``baseline++``,
    ``protonet``, ``maml`` ...) or ``"random-init"`` (no training). ``train`` overrides
    fields of the :class:`~fewshot.config.TrainConfig`.
    """

    name: str
    backbone: str
    objective: str
    source: str = "digits"
    backbone_options: dict = field(default_factory=dict)
    method_options: dict = field(default_factory=dict)
    image_size: int = 28
    train: dict = field(default_factory=dict)


# Training shapes by objective: (way, shot, query, meta_batch). Baseline episodes are
# class-balanced minibatches of 64 classes × 2 images (as benchmarks/transfer_omniglot.py).
_SHAPES = {"baseline": (64, 1, 1, 1), "baseline++": (64, 1, 1, 1), "protonet": (20, 1, 5, 1),
           "maml": (5, 1, 5, 4), "fomaml": (5, 1, 5, 4)}

_SMALL_RESNET = {"widths": [16, 32, 64, 128]}
_RESNET = {"widths": [32, 64, 128, 256]}

PRESETS: dict[str, list[ZooSpec]] = {
    # 13 models: 3 backbones × widths, 4 sources, 5 objectives. The largest (ResNet-12,
    # 2.0M parameters) gets the same CPU budget as Conv-4/16 (7.5k), so it is not
    # automatically the best.
    "default": [
        ZooSpec("conv4-64-baseline-asian", "conv4", "baseline", "omniglot:bg-asian", {"width": 64}),
        ZooSpec("conv4-64-baseline++-european", "conv4", "baseline++", "omniglot:bg-european", {"width": 64}),
        ZooSpec("conv4-64-protonet-european", "conv4", "protonet", "omniglot:bg-european", {"width": 64}),
        ZooSpec("conv4-32-protonet-other", "conv4", "protonet", "omniglot:bg-other", {"width": 32}),
        ZooSpec("conv4-32-maml-asian", "conv4", "maml", "omniglot:bg-asian", {"width": 32},
                {"inner_steps": 1, "inner_lr": 0.4, "first_order": True}),
        ZooSpec("conv4-16-baseline-other", "conv4", "baseline", "omniglot:bg-other", {"width": 16}),
        ZooSpec("conv4-32-baseline++-digits", "conv4", "baseline++", "digits", {"width": 32}),
        ZooSpec("conv4-32-protonet-digits", "conv4", "protonet", "digits", {"width": 32}),
        ZooSpec("resnet12-s-baseline++-other", "resnet12", "baseline++", "omniglot:bg-other", _SMALL_RESNET),
        ZooSpec("resnet12-m-protonet-asian", "resnet12", "protonet", "omniglot:bg-asian", _RESNET),
        ZooSpec("mlp-512-protonet-asian", "mlp", "protonet", "omniglot:bg-asian", {"hidden": [512, 256]}),
        ZooSpec("mlp-256-baseline-digits", "mlp", "baseline", "digits", {"hidden": [256, 128]}),
        ZooSpec("conv4-64-random", "conv4", "random-init", "none", {"width": 64}),
    ],
    # Four small models on 8×8 digits, built in seconds: for tests and a first try offline.
    "tiny": [
        ZooSpec("tiny-conv-protonet", "conv4", "protonet", "digits", {"width": 8, "depth": 2}, image_size=8,
                train={"train_way": 10, "train_query": 3}),
        ZooSpec("tiny-conv-baseline++", "conv4", "baseline++", "digits", {"width": 8, "depth": 2}, image_size=8,
                train={"train_way": 20}),
        ZooSpec("tiny-mlp-baseline", "mlp", "baseline", "digits", {"hidden": [32]}, image_size=8,
                train={"train_way": 20}),
        ZooSpec("tiny-conv-random", "conv4", "random-init", "none", {"width": 8, "depth": 2}, image_size=8),
    ],
}


def _source_dataset(source: str, image_size: int, data_root: str | Path | None, cache: dict):
    """``(dataset, split, source metadata)`` for a spec's source, datasets loaded once per build."""
    from ..data import load_dataset

    kind, _, group = source.partition(":")
    if kind == "digits":
        key = ("digits", image_size)
        if key not in cache:
            cache[key] = load_dataset("digits", data_root, image_size=image_size, rotations=True)
        dataset = cache[key]
        return dataset, "train", {"dataset": "digits", "group": "digits-0-4-rotations",
                                  "dataset_options": {"image_size": image_size, "rotations": True}}
    if kind == "omniglot":
        if group not in BACKGROUND_GROUPS:
            raise ConfigError(f"unknown Omniglot alphabet group '{group}'; choose one of: "
                              f"{', '.join(BACKGROUND_GROUPS)}")
        key = ("omniglot", image_size)
        if key not in cache:
            dataset = load_dataset("omniglot", data_root, image_size=image_size, split_scheme="background")
            dataset.splits.update(alphabet_splits(dataset, BACKGROUND_GROUPS))
            cache[key] = dataset
        return cache[key], group, {"dataset": "omniglot", "group": group, "alphabets": list(BACKGROUND_GROUPS[group]),
                                   "dataset_options": {"image_size": image_size, "split_scheme": "background"}}
    raise ConfigError(f"unknown zoo source '{source}'; use 'digits' or 'omniglot:GROUP'")


def _train_config(spec: ZooSpec, dataset, split: str, cpu_minutes: float | None, max_steps: int | None,
                  seed: int):
    from ..config import TrainConfig

    way, shot, query, meta_batch = _SHAPES.get(spec.objective, (20, 1, 5, 1))
    way = min(way, len(dataset.split_classes(split)))
    source = spec.source.partition(":")[0]
    options = {"image_size": spec.image_size, **({"rotations": True} if source == "digits" else
                                                  {"split_scheme": "background"})}
    values: dict[str, Any] = dict(
        method=spec.objective, method_options=dict(spec.method_options), backbone=spec.backbone,
        backbone_options=dict(spec.backbone_options), dataset=source, dataset_options=options, train_split=split,
        val_split=None, way=min(5, way), shot=1, query=5, train_way=way, train_shot=shot, train_query=query,
        meta_batch=meta_batch, episodes=max_steps or 1_000_000, lr=1e-3, checkpoint_every=200,
        val_every=10**9, seed=seed, cpu_minutes=cpu_minutes)
    values.update(spec.train)
    if max_steps is not None:
        values["episodes"] = min(int(values["episodes"]), max_steps)
    return TrainConfig(**values)


def build_model(zoo: Zoo, spec: ZooSpec, *, cpu_minutes: float | None = 1.0, max_steps: int | None = None,
                data_root: str | Path | None = None, runs: str | Path | None = None, seed: int = 0,
                progress: bool = True, cache: dict | None = None) -> dict:
    """Train (or resume) one spec with the one trainer and add it to ``zoo``; returns its entry."""
    from ..train import Trainer

    cache = {} if cache is None else cache
    extra = {"zoo_spec": asdict(spec)}
    if spec.objective == "random-init":
        torch.manual_seed(seed)
        image_shape = (1, spec.image_size, spec.image_size)
        backbone = build_backbone(spec.backbone, image_shape, **spec.backbone_options)
        return zoo.add(spec.name, backbone, image_shape=image_shape,
                       metadata={**extra, "objective": "random-init", "source": {}, "train_cpu_seconds": 0.0})
    dataset, split, source = _source_dataset(spec.source, spec.image_size, data_root, cache)
    config = _train_config(spec, dataset, split, cpu_minutes, max_steps, seed)
    run_dir = zoo.root / "runs" / spec.name
    state_file = run_dir / "state.json"
    state = read_json(state_file) if state_file.exists() else None
    if state is None or not state.get("done"):
        Trainer(config, run_dir, dataset=dataset, runs=runs).run(resume=state is not None, progress=progress)
        state = read_json(state_file)
    classes = dataset.split_classes(split)
    source = {**source, "split": split, "num_classes": len(classes), "classes": classes,
              "run": str(run_dir.resolve()), "steps": state["step"], "seed": seed}
    extra.update(source=source, train_cpu_seconds=state["cpu_seconds"])
    return zoo.add(spec.name, run_dir, metadata=extra, overwrite=True)


def build_zoo(root: str | Path, specs: Sequence[ZooSpec] | str = "default", *, cpu_minutes: float | None = 1.0,
              max_steps: int | None = None, only: Sequence[str] | None = None, data_root: str | Path | None = None,
              runs: str | Path | None = None, seed: int = 0, progress: bool = True) -> Zoo:
    """Build the diverse zoo (``specs``: a preset name or a list of :class:`ZooSpec`).

    Each model trains for at most ``cpu_minutes`` of CPU time (and ``max_steps``
    steps); models already in the zoo are skipped, so an interrupted build continues
    where it stopped. ``only`` restricts the build to the named specs.
    """
    if isinstance(specs, str):
        if specs not in PRESETS:
            raise ConfigError(f"unknown zoo preset '{specs}'; choose one of: {', '.join(PRESETS)}")
        specs = PRESETS[specs]
    if only:
        unknown = sorted(set(only) - {s.name for s in specs})
        if unknown:
            raise ConfigError(f"no zoo spec named {', '.join(unknown)}; the specs are: "
                              f"{', '.join(s.name for s in specs)}")
        specs = [s for s in specs if s.name in set(only)]
    zoo = Zoo(root, create=True)
    cache: dict = {}
    todo = [s for s in specs if s.name not in zoo]
    with tqdm(total=len(specs), initial=len(specs) - len(todo), desc="building the zoo", unit="model",
              disable=not progress, dynamic_ncols=True) as bar:
        for spec in todo:
            bar.set_postfix_str(spec.name)
            build_model(zoo, spec, cpu_minutes=cpu_minutes, max_steps=max_steps, data_root=data_root, runs=runs,
                        seed=seed, progress=progress, cache=cache)
            bar.update()
    return zoo


__all__ = ["BACKGROUND_GROUPS", "EVALUATION_GROUPS", "PRESETS", "Zoo", "ZooSpec", "alphabet_splits", "bn_mode",
           "build_model", "build_zoo"]
