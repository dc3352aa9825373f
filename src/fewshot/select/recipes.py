"""The training recipe of a zoo: presets of diverse models, trained by fewshot's own trainer.

:func:`build_zoo` makes the deliberately diverse zoo of issue 6: Conv-4 of three widths,
two ResNet-12s, two MLPs; trained on groups of Omniglot's background alphabets (grouped
by script family, :data:`~.groups.BACKGROUND_GROUPS`) or on digits; with supervised
pre-training (Baseline and Baseline++, Chen et al. 2019, arXiv:1904.04232), Prototypical
Networks (Snell et al. 2017, arXiv:1703.05175), MAML (Finn et al. 2017, arXiv:1703.03400),
or no training at all (a randomly initialised control). Big models get the same CPU
budget as small ones, so size alone does not decide which is best for a task. Building is
resumable: models already in the zoo are skipped, and a model whose training was
interrupted resumes from its last checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from ..progress import bar as progress_bar

from ..errors import ConfigError
from ..runs import Run
from ..models.backbones import build_backbone
from .groups import BACKGROUND_GROUPS, alphabet_splits
from .index import Zoo
from .tasks import PHOTO_OPTIONS


# Training shapes, (way, shot, query, meta_batch), given by each spec (no list of method
# names decides them). Supervised pre-training takes class-balanced minibatches of 64
# classes × 2 images (as benchmarks/transfer_omniglot.py).
BATCHES = (64, 1, 1, 1)
EPISODES = (20, 1, 5, 1)
MAML_EPISODES = (5, 1, 5, 4)


@dataclass
class ZooSpec:
    """One model of a zoo to build: backbone, source data, objective, training shape.

    ``source`` is ``"omniglot:GROUP"`` (a group of :data:`BACKGROUND_GROUPS`, with
    rotations as classes), ``"digits"`` (digits 0-4 and their rotations) or ``"photos"``
    (the training regions of :mod:`fewshot.data.photos`, in grey).
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
    shape: tuple[int, int, int, int] = EPISODES  # (way, shot, query, meta_batch) of training



_SMALL_RESNET = {"widths": [16, 32, 64, 128]}
_RESNET = {"widths": [32, 64, 128, 256]}

PRESETS: dict[str, list[ZooSpec]] = {
    # 13 models: 3 backbones × widths, 4 sources, 5 objectives. The largest (ResNet-12,
    # 2.0M parameters) gets the same CPU budget as Conv-4/16 (7.5k), so it is not
    # automatically the best.
    "default": [
        ZooSpec("conv4-64-baseline-asian", "conv4", "baseline", "omniglot:bg-asian", {"width": 64}, shape=BATCHES),
        ZooSpec("conv4-64-baseline++-european", "conv4", "baseline++", "omniglot:bg-european", {"width": 64}, shape=BATCHES),
        ZooSpec("conv4-64-protonet-european", "conv4", "protonet", "omniglot:bg-european", {"width": 64}),
        ZooSpec("conv4-32-protonet-other", "conv4", "protonet", "omniglot:bg-other", {"width": 32}),
        ZooSpec("conv4-32-maml-asian", "conv4", "maml", "omniglot:bg-asian", {"width": 32},
                {"inner_steps": 1, "inner_lr": 0.4, "first_order": True}, shape=MAML_EPISODES),
        ZooSpec("conv4-16-baseline-other", "conv4", "baseline", "omniglot:bg-other", {"width": 16}, shape=BATCHES),
        ZooSpec("conv4-32-baseline++-digits", "conv4", "baseline++", "digits", {"width": 32}, shape=BATCHES),
        ZooSpec("conv4-32-protonet-digits", "conv4", "protonet", "digits", {"width": 32}),
        ZooSpec("resnet12-s-baseline++-other", "resnet12", "baseline++", "omniglot:bg-other", _SMALL_RESNET, shape=BATCHES),
        ZooSpec("resnet12-m-protonet-asian", "resnet12", "protonet", "omniglot:bg-asian", _RESNET),
        ZooSpec("mlp-512-protonet-asian", "mlp", "protonet", "omniglot:bg-asian", {"hidden": [512, 256]}),
        ZooSpec("mlp-256-baseline-digits", "mlp", "baseline", "digits", {"hidden": [256, 128]}, shape=BATCHES),
        ZooSpec("conv4-64-random", "conv4", "random-init", "none", {"width": 64}),
    ],
    # Four small models on 8×8 digits, built in seconds: for tests and a first try offline.
    "tiny": [
        ZooSpec("tiny-conv-protonet", "conv4", "protonet", "digits", {"width": 8, "depth": 2}, image_size=8,
                train={"train_way": 10, "train_query": 3}),
        ZooSpec("tiny-conv-baseline++", "conv4", "baseline++", "digits", {"width": 8, "depth": 2}, image_size=8,
                train={"train_way": 20}, shape=BATCHES),
        ZooSpec("tiny-mlp-baseline", "mlp", "baseline", "digits", {"hidden": [32]}, image_size=8,
                train={"train_way": 20}, shape=BATCHES),
        ZooSpec("tiny-conv-random", "conv4", "random-init", "none", {"width": 8, "depth": 2}, image_size=8),
    ],
}


def source_dataset(source: str, image_size: int, data_root: str | Path | None, cache: dict):
    """``(dataset, split, source metadata)`` for a zoo source, datasets loaded once per build
    (``cache``); the metadata's ``dataset_options`` are what the dataset was loaded with."""
    from ..data import load_dataset

    kind, _, group = source.partition(":")
    if kind == "photos":
        options = {**PHOTO_OPTIONS, "image_size": image_size}
        key = ("photos", image_size)
        if key not in cache:
            cache[key] = load_dataset("photo-regions", data_root, **options)
        return cache[key], "train", {"dataset": "photo-regions", "group": "photo-regions-train",
                                     "dataset_options": options}
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
    raise ConfigError(f"unknown zoo source '{source}'; use 'digits', 'photos' or 'omniglot:GROUP'")


def _train_config(spec: ZooSpec, dataset, split: str, source: dict, cpu_minutes: float | None,
                  max_steps: int | None, seed: int):
    from ..config import TrainConfig

    way, shot, query, meta_batch = spec.shape
    way = min(way, len(dataset.split_classes(split)))
    values: dict[str, Any] = dict(
        method=spec.objective, method_options=dict(spec.method_options), backbone=spec.backbone,
        backbone_options=dict(spec.backbone_options), dataset=source["dataset"],
        dataset_options=dict(source["dataset_options"]), train_split=split,
        val_split=None, way=min(5, way), shot=1, query=5, train_way=way, train_shot=shot, train_query=query,
        meta_batch=meta_batch, episodes=max_steps or 1_000_000, lr=1e-3, checkpoint_every=200,
        val_every=10**9, seed=seed, cpu_minutes=cpu_minutes)
    values.update(spec.train)
    if max_steps is not None:
        values["episodes"] = min(int(values["episodes"]), max_steps)
    return TrainConfig(**values)


def build_model(zoo: Zoo, spec: ZooSpec, *, cpu_minutes: float | None = 1.0, max_steps: int | None = None,
                data_root: str | Path | None = None, runs: str | Path | None = None, seed: int = 0,
                progress: bool = True, cache: dict | None = None, device: str | None = None,
                precision: str | None = None) -> dict:
    """Train (or resume) one spec with the one trainer (on ``device``, in ``precision``:
    default the config's, ``auto`` / fp32) and add it to ``zoo``; returns its entry."""
    from ..train import Trainer

    cache = {} if cache is None else cache
    extra = {"zoo_spec": asdict(spec)}
    if spec.objective == "random-init":
        torch.manual_seed(seed)
        image_shape = (1, spec.image_size, spec.image_size)
        backbone = build_backbone(spec.backbone, image_shape, **spec.backbone_options)
        return zoo.add(spec.name, backbone, image_shape=image_shape,
                       metadata={**extra, "objective": "random-init", "source": {}, "train_cpu_seconds": 0.0})
    dataset, split, source = source_dataset(spec.source, spec.image_size, data_root, cache)
    config = _train_config(spec, dataset, split, source, cpu_minutes, max_steps, seed)
    run = Run(zoo.root / "runs" / spec.name)
    run_dir = run.path
    state = run.read_state() if Run.is_run(run_dir) else None
    if state is None or not state.get("done"):
        Trainer(config, run_dir, dataset=dataset, runs=runs, device=device, precision=precision).run(
            resume=state is not None, progress=progress)
        state = run.read_state()
    classes = dataset.split_classes(split)
    source = {**source, "split": split, "num_classes": len(classes), "classes": classes,
              "run": str(run_dir.resolve()), "steps": state["step"], "seed": seed}
    extra.update(source=source, train_cpu_seconds=state["cpu_seconds"])
    return zoo.add(spec.name, run_dir, metadata=extra, overwrite=True)


def build_zoo(root: str | Path, specs: Sequence[ZooSpec] | str = "default", *, cpu_minutes: float | None = 1.0,
              max_steps: int | None = None, only: Sequence[str] | None = None, data_root: str | Path | None = None,
              runs: str | Path | None = None, seed: int = 0, progress: bool = True, device: str | None = None,
              precision: str | None = None) -> Zoo:
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
    with progress_bar(len(specs), initial=len(specs) - len(todo), desc="building the zoo", unit="model",
                      enabled=progress) as bar:
        for spec in todo:
            bar.set_postfix_str(spec.name)
            build_model(zoo, spec, cpu_minutes=cpu_minutes, max_steps=max_steps, data_root=data_root, runs=runs,
                        seed=seed, progress=progress, cache=cache, device=device, precision=precision)
            bar.update()
    return zoo


__all__ = ["PRESETS", "ZooSpec", "build_model", "build_zoo"]
