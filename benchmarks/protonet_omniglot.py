"""Prototypical Networks on Omniglot (Vinyals split, 28×28, rotations), as in Snell et al. (2017).

Trains one model per shot (60-way training episodes, 5 queries per class, Adam 1e-3
halved every 2,000 steps, as the paper) within a CPU budget, keeps the best
validation checkpoint, and tests it on 600 fixed episodes at 5 and 20 ways. Also
measures Conv-4 training throughput against the machine's fp32 matmul throughput.

    FEWSHOT_DATA=../shared/data python benchmarks/protonet_omniglot.py --minutes 20

Writes benchmarks/results/protonet_omniglot.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from fewshot.config import TrainConfig
from fewshot.data import EpisodeSampler, load_dataset
from fewshot.evaluate import evaluate
from fewshot.runs import load_run
from fewshot.train import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from throughput import conv4_throughput, matmul_gflops  # noqa: E402

PUBLISHED = {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9}  # Snell et al. 2017, Table 1
RESULTS = Path(__file__).parent / "results"


def train_and_test(data, shot: int, steps: int, minutes: float, runs: Path) -> dict:
    config = TrainConfig(method="protonet", dataset="omniglot", dataset_options={"split_scheme": "vinyals"},
                         way=5, shot=shot, query=15, train_way=60, train_query=5, episodes=steps,
                         lr=1e-3, lr_step=2000, val_every=250, val_episodes=200, checkpoint_every=250, seed=0,
                         cpu_minutes=minutes)
    run_dir = runs / f"protonet-omniglot-{shot}shot"
    trainer = Trainer(config, run_dir, dataset=data, runs=runs)
    result = trainer.run(resume=(run_dir / "state.json").exists())
    state = trainer.state
    _, method, _ = load_run(run_dir, "best")
    rows = {}
    for way in (5, 20):
        sampler = EpisodeSampler(data, "test", way, shot, 15, seed=0)
        r = evaluate(method, sampler, 600, desc=f"{way}-way {shot}-shot")
        rows[f"{way}-way {shot}-shot"] = {"accuracy": r.accuracy, "ci95": r.ci95, "episodes": r.episodes,
                                         "published": PUBLISHED[(way, shot)]}
    return {"shot": shot, "steps_trained": state["step"], "train_way": 60, "cpu_seconds": state["cpu_seconds"],
            "wall_seconds": state["seconds"], "best_step": state["best"]["step"],
            "val_accuracy": state["best"]["accuracy"], "val_curve": state["history"]["val"], "test": rows,
            "images_per_second": result.images_per_second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="CPU minutes of training per shot setting")
    parser.add_argument("--steps", type=int, default=20000, help="at most this many training steps per setting")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--runs", default="runs/bench")
    args = parser.parse_args()
    runs = Path(args.runs)
    data = load_dataset("omniglot", split_scheme="vinyals")
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    matmul = matmul_gflops()
    speed = {"matmul_gflops": matmul, "conv4": {}}
    for variant in ("plain", "plain-channels-last", "swapped", "fewshot"):
        row = conv4_throughput(batch=360, variant=variant)
        row["ratio_to_matmul"] = row["gflops"] / matmul
        speed["conv4"][variant] = row
    print(json.dumps(speed, indent=2))
    settings = [train_and_test(data, shot, args.steps, args.minutes, runs) for shot in args.shots]
    out = {"benchmark": "protonet_omniglot", "command": " ".join(["python", *sys.argv]), "machine": machine,
           "throughput": speed, "settings": settings}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "protonet_omniglot.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["| setting | fewshot (600 episodes, 95% CI) | published | steps trained | CPU time |",
             "|---|---|---|---|---|"]
    for s in settings:
        for name, row in s["test"].items():
            lines.append(f"| {name} | {row['accuracy']:.1f} ± {row['ci95']:.1f} % | {row['published']} % | "
                         f"{s['steps_trained']} × 60-way | {s['cpu_seconds'] / 60:.0f} CPU-min |")
    (RESULTS / "protonet_omniglot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
