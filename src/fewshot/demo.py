"""The main job (`make demo`): the product, end to end, offline, in a few minutes.

1. Meta-train Prototypical Networks with the dataset's recipe (digits: 0-4 and their
   rotations; Omniglot: the Vinyals background characters), and first-order MAML.
2. Treat the held-out classes as *your task*: fit the trained model on a few labelled
   images per class with the estimator API (:func:`fewshot.load`), predict images it
   has never seen and print some, with calibrated probabilities.
3. Compare ProtoNet, MAML, an LP-FT transfer strategy (on ProtoNet's backbone) and a
   nearest class mean on raw pixels on identical test episodes, with paired 95% CIs
   against the pixel baseline.
4. Write the HTML report and an exported model, and say where everything went.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .config import DEFAULT_PRECISION, TrainConfig
from .data import EpisodeSampler, load_dataset
from .errors import ConfigError
from .evaluate import evaluate, record_evaluation
from .learner import load
from .methods import PixelNearestMean
from .methods.transfer import adapt_method
from .metrics import confidence_interval
from .store import runs_folder
from .train import Trainer

MARKER = ".fewshot-demo"
#: Meta-training settings per dataset and method (over the dataset's recipe, fewshot.config.RECIPES).
PRESETS = {
    "digits": {
        "protonet": dict(method="protonet"),  # exactly `fewshot train protonet --dataset digits`
        # inner_lr 0.1: at MAML's Omniglot 0.4, 300 steps reached 55 % validation accuracy, at 0.1 59 %.
        "maml": dict(method="maml", method_options={"first_order": True, "inner_steps": 1, "inner_lr": 0.1},
                     train_way=5, train_query=10, meta_batch=4, episodes=600, val_every=300, val_episodes=100),
        "test_episodes": 300, "support_per_class": 5,
    },
    "omniglot": {
        "protonet": dict(method="protonet", dataset_options={"split_scheme": "vinyals"}, shot=5, train_way=20,
                         train_query=5, episodes=1500, val_every=500, val_episodes=100, lr_step=1000),
        "maml": dict(method="maml", dataset_options={"split_scheme": "vinyals"}, method_options={
            "first_order": True, "inner_steps": 1}, shot=1, train_query=5, meta_batch=4, episodes=300,
            val_every=150, val_episodes=50),
        "test_episodes": 300, "support_per_class": 5,
    },
}
COLUMNS = (("pixel-ncm", "nearest class mean on raw pixels"), ("protonet", "Prototypical Networks"),
           ("maml", "first-order MAML"), ("protonet+lp-ft", "LP-FT on ProtoNet's backbone"))


def run_demo(dataset: str = "digits", *, data_root=None, runs=None, out=None, episodes: int | None = None,
             quick: bool = False, test_episodes: int | None = None, device: str = "auto",
             precision: str = DEFAULT_PRECISION) -> dict:
    if dataset not in PRESETS:
        raise ConfigError(f"the demo runs on {' or '.join(PRESETS)}, not '{dataset}'")
    torch.set_num_threads(1)  # the figures' CPU-seconds are one core's
    preset = PRESETS[dataset]
    test_episodes = test_episodes or (30 if quick else preset["test_episodes"])
    out = _fresh_folder(Path(out) if out else runs_folder(runs) / f"demo-{dataset}")
    start, cpu_start = time.perf_counter(), time.process_time()
    configs = {}
    for name in ("protonet", "maml"):
        settings = dict(preset[name])
        if quick:
            settings.update(episodes=10, val_every=10, val_episodes=5)
        elif episodes and name == "protonet":
            settings["episodes"] = episodes
        configs[name] = TrainConfig.for_dataset(dataset, device=device, precision=precision, **settings)
    data = load_dataset(dataset, data_root, **configs["protonet"].dataset_options)
    train, test = data.split_classes("train"), data.split_classes("test")
    print(f"fewshot demo on {dataset}: meta-train on {len(train)} classes, then a new task with "
          f"{len(test)} classes never seen in training\n")

    # 1. Meta-train.
    trained = {}
    for name, config in configs.items():
        print(f"[1] meta-training {COLUMNS[[c for c, _ in COLUMNS].index(name)][1]}: {config.episodes} steps of "
              f"{config.train_shape[0]}-way episodes")
        trained[name] = Trainer(config, out / name, dataset=data, runs=runs).run()
        print(f"    {trained[name].steps} steps, {trained[name].cpu_seconds:.0f} CPU-s -> {_shown(out / name)}")

    # 2. Your task: a few labelled images per new class, predictions on the rest.
    task = test if len(test) <= 5 else sorted(np.random.default_rng(1).choice(test, 5, replace=False).tolist())
    shown = _your_task(out, data, task, preset["support_per_class"])

    # 3. Identical episodes, paired intervals against the pixel baseline.
    print(f"\n[3] {configs['protonet'].way}-way test accuracy on {test_episodes} identical episodes per column "
          "(mean ± 95% CI; paired difference from raw pixels):")
    protonet, maml = (load(out / n, calibration_episodes=0).method for n in ("protonet", "maml"))
    methods = {"pixel-ncm": PixelNearestMean(), "protonet": protonet, "maml": maml,
               "protonet+lp-ft": adapt_method(load(out / "protonet", calibration_episodes=0).method, "lp-ft")}
    table = {}
    for shot in (1, 5):
        sampler = EpisodeSampler(data, "test", configs["protonet"].way, shot, configs["protonet"].query, seed=0)
        results = {}
        for name, method in methods.items():
            cpu = time.process_time()
            results[name] = evaluate(method, sampler, test_episodes, desc=f"{name} {shot}-shot", device=device,
                                     precision=precision if name != "pixel-ncm" else DEFAULT_PRECISION)
            record_evaluation(results[name], method=name, dataset=dataset, split="test", seed=0, runs=runs,
                              run_dir=out / name.split("+")[0] if name != "pixel-ncm" else None,
                              cpu_seconds=time.process_time() - cpu,
                              config={"dataset_options": data.origin["options"], "demo": True})
        table[shot] = results
    print(f"  {'method':34s} {'1-shot':>14s} {'vs pixels':>12s} {'5-shot':>14s} {'vs pixels':>12s}")
    for name, label in COLUMNS:
        cells = []
        for shot in (1, 5):
            r, base = table[shot][name], table[shot]["pixel-ncm"]
            gain = confidence_interval(r.scores - base.scores)
            cells += [f"{r.accuracy:5.1f} ± {r.ci95:3.1f} %", "" if name == "pixel-ncm" else f"{gain[0]:+5.1f} ± {gain[1]:3.1f}"]
        print(f"  {label:34s} {cells[0]:>14s} {cells[1]:>12s} {cells[2]:>14s} {cells[3]:>12s}")

    # 4. The report and the shipped model.
    report = _report(out, runs, data_root)
    print(f"\n[4] done in {time.perf_counter() - start:.0f} s, {time.process_time() - cpu_start:.0f} CPU-s (one "
          "thread). Where everything went:")
    print(f"    runs (config, checkpoints, calibration):  {_shown(out / 'protonet')}  {_shown(out / 'maml')}")
    print(f"    exported model (fewshot.load / fewshot predict): {_shown(out / 'model.safetensors')}")
    print(f"    HTML report: {_shown(report)}")
    print(f"    run records: {_shown(runs_folder(runs) / 'fewshot.sqlite')} (`fewshot runs`)")
    return {"accuracy": {shot: {n: r.accuracy for n, r in rs.items()} for shot, rs in table.items()},
            "your_task": shown, "out": str(out)}


def _shown(path: Path | str) -> str:
    """A path as printed: under the home folder as ``~/...``."""
    path, home = Path(path), Path.home()
    return f"~/{path.relative_to(home)}" if path.is_absolute() and path.is_relative_to(home) else str(path)


def _fresh_folder(out: Path) -> Path:
    """The demo's own folder, emptied of an earlier demo (and only a demo's: its marker says so)."""
    import shutil

    if out.exists():
        if not (out / MARKER).exists():
            raise ConfigError(f"{out} exists and was not made by the demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by `fewshot demo`; the next demo replaces this folder\n")
    return out


def _your_task(out: Path, data, classes: list[int], per_class: int) -> dict:
    """Fit the trained ProtoNet on ``per_class`` labelled images of each new class, predict the rest."""
    rng = np.random.default_rng(0)
    support, labels, query, truth = [], [], [], []
    for c in classes:
        images = data.class_images(c)
        order = rng.permutation(len(images))
        name = data.class_names[c].removesuffix("/rot000")
        support += [images[i] for i in order[:per_class]]
        labels += [name] * per_class
        query += [images[i] for i in order[per_class:]]
        truth += [name] * (len(images) - per_class)
    print(f"\n[2] your task: {len(classes)} new classes, {per_class} labelled images each "
          f"(fewshot.load(...).fit(images, labels))")
    learner = load(out / "protonet").fit(torch.stack(support), labels)
    proba = learner.predict_proba(torch.stack(query))
    predicted = learner.classes_[proba.argmax(1)]
    accuracy = float(np.mean(predicted == np.asarray(truth)))
    for i in rng.choice(len(query), 6, replace=False):
        print(f"    held-out image {i:4d}: true {truth[i]!s:>8s}  predicted {predicted[i]!s:>8s}  "
              f"(p = {proba[i].max():.2f})")
    confidence = float(proba.max(1).mean())
    print(f"    {accuracy:.1%} of {len(query)} held-out images right; mean confidence {confidence:.1%} "
          f"(temperature {learner.temperature:.3g}, fitted on validation episodes)")
    learner.save(out / "model.safetensors")
    return {"accuracy": accuracy, "images": len(query), "confidence": confidence}


def _report(out: Path, runs, data_root) -> str:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "not written: matplotlib is missing (pip install 'fewshot[report]')"
    from .report import build_report

    report = build_report([out / "protonet", out / "maml"], out / "report", runs=runs, data_root=data_root)
    return str(report.path)
