"""The main job (`make demo`): meta-train Prototypical Networks, then compare them with
a learner that transfers nothing across tasks, on identical test episodes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .config import TrainConfig
from .data import EpisodeSampler, load_dataset
from .evaluate import evaluate, record_evaluation
from .metrics import confidence_interval
from .methods import PixelNearestMean
from .runs import load_run
from .store import runs_folder
from .train import Trainer

PRESETS = {
    # digits 0-4 train (x4 rotations: 20 classes), upright 5-9 test; too few classes for
    # a validation split. 8x8 images take two conv blocks, not four.
    "digits": dict(dataset_options={"rotations": True}, backbone_options={"depth": 2}, way=5, shot=1,
                   query=15, train_way=20, train_query=10, episodes=1500, val_split=None, lr_step=1000),
    "omniglot": dict(dataset_options={"split_scheme": "vinyals"}, way=5, shot=5, query=15, train_way=20,
                     train_query=5, episodes=1500, val_every=500, val_episodes=100, lr_step=1000),
}


def run_demo(dataset: str = "digits", *, data_root=None, runs=None, episodes: int | None = None,
             quick: bool = False, test_episodes: int = 600, device: str = "auto", precision: str = "fp32") -> dict:
    preset = dict(PRESETS[dataset])
    if quick:
        preset.update(episodes=20, val_every=20, val_episodes=10)
        test_episodes = 50
    if episodes:
        preset["episodes"] = episodes
    config = TrainConfig(method="protonet", dataset=dataset, device=device, precision=precision, **preset)
    run_dir = runs_folder(runs) / f"demo-{dataset}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo's own folder: each demo starts afresh
    data = load_dataset(dataset, data_root, **config.dataset_options)
    print(f"fewshot demo: Prototypical Networks (Conv-4) on {dataset}: meta-train on split 'train' "
          f"({len(data.split_classes('train'))} classes), test on split 'test' "
          f"({len(data.split_classes('test'))} new classes)")
    start = time.perf_counter()
    trained = Trainer(config, run_dir, dataset=data, runs=runs).run()
    _, protonet, _ = load_run(run_dir)
    rows = {}
    for shot in (1, 5):
        sampler = EpisodeSampler(data, "test", config.way, shot, config.query, seed=0)
        ours = evaluate(protonet, sampler, test_episodes, desc=f"protonet {shot}-shot", device=device,
                        precision=precision)
        base = evaluate(PixelNearestMean(), sampler, test_episodes, desc=f"pixel-ncm {shot}-shot", device=device)
        gain = confidence_interval(ours.scores - base.scores)
        rows[shot] = (ours, base, gain)
        for name, result in (("protonet", ours), ("pixel-ncm", base)):
            record_evaluation(result, method=name, dataset=dataset, split="test", seed=0,
                              run_dir=run_dir if name == "protonet" else None, runs=runs,
                              config={"dataset_options": config.dataset_options, "demo": True})
    print(f"\n{config.way}-way test accuracy on {test_episodes} identical episodes per column "
          f"(mean ± 95% CI; {trained.steps} meta-training steps, {trained.cpu_seconds:.0f} CPU-s):")
    print(f"  {'method':38s} {'1-shot':>14s} {'5-shot':>14s}")
    for label, index in (("nearest class mean on raw pixels", 1), ("Prototypical Networks (meta-trained)", 0)):
        cells = [f"{rows[s][index].accuracy:5.1f} ± {rows[s][index].ci95:3.1f} %" for s in (1, 5)]
        print(f"  {label:38s} {cells[0]:>14s} {cells[1]:>14s}")
    gains = [f"{rows[s][2][0]:+5.1f} ± {rows[s][2][1]:3.1f}  " for s in (1, 5)]
    print(f"  {'gain from meta-learning (paired)':38s} {gains[0]:>14s} {gains[1]:>14s}")
    print(f"\ndone in {time.perf_counter() - start:.0f} s; run in {run_dir}, recorded in "
          f"{Path(runs_folder(runs)) / 'fewshot.sqlite'} (`fewshot runs`)")
    return {shot: {"protonet": r[0].accuracy, "pixel-ncm": r[1].accuracy} for shot, r in rows.items()}
