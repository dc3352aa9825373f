"""Reproduce two published Omniglot results on one GPU, in a fixed time budget.

* MAML, 5-way 1-shot (Finn et al., 2017, arXiv:1703.03400): Conv-4, meta-batch 32, one
  query per class in training, one inner step of 0.4 (three at test time, as theirs),
  Adam 1e-3; published 98.7 %.
* Prototypical Networks, 20-way 1-shot (Snell et al., 2017, arXiv:1703.05175): Conv-4,
  60-way 1-shot 5-query training episodes, Adam 1e-3 halved every 2,000 steps;
  published 96.0 %.

Each model gets ``--minutes`` of training wall time: a short calibration run (the
trainer's own clock, start-up excluded) gives the seconds per meta-iteration, and the
run takes as many iterations as fit (at most ``--max-steps``), validating four times and
keeping the best checkpoint, which is then tested on 600 test episodes (15 queries per
class, 95 % CI). Everything goes through ``fewshot``'s trainer and evaluation, so the
run folders can be resumed, evaluated and reported like any other.

    FEWSHOT_DATA=../shared/data python benchmarks/reproduce_gpu.py            # one GPU, about 8 minutes
    FEWSHOT_DATA=../shared/data python benchmarks/reproduce_gpu.py --device cpu --max-steps 3 \\
        --test-episodes 5 --calibration-steps 2 --out /tmp/smoke                # a CPU smoke test

Writes ``benchmarks/results/reproduce_gpu.{json,md}`` (or ``--results``), with the
device's name, the precision, wall times and iterations.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
COMMON = dict(dataset="omniglot", dataset_options={"split_scheme": "vinyals"}, lr=1e-3, val_split="val")
MODELS = {
    "maml-5way-1shot": dict(
        config=dict(method="maml", way=5, shot=1, query=15, train_query=1, meta_batch=32,
                    method_options={"inner_steps": 1, "inner_lr": 0.4, "test_inner_steps": 3}),
        test=(5, 1), published=98.7, source="Finn et al., 2017, Table 1"),
    "protonet-20way-1shot": dict(
        config=dict(method="protonet", way=20, shot=1, query=15, train_way=60, train_query=5, meta_batch=1,
                    lr_step=2000),
        test=(20, 1), published=96.0, source="Snell et al., 2017, Table 1"),
}


def run_model(name: str, spec: dict, args: argparse.Namespace, data, out: Path) -> dict:
    from fewshot.config import TrainConfig
    from fewshot.data import EpisodeSampler
    from fewshot.evaluate import evaluate
    from fewshot.io import read_json
    from fewshot.runs import load_run
    from fewshot.train import Trainer

    base = {**COMMON, **spec["config"], "device": args.device, "precision": args.precision,
            "val_episodes": args.val_episodes, "seed": args.seed}
    # Calibration: seconds per meta-iteration on this device, by the trainer's clock.
    calib_dir = out / f"{name}-calibration"
    calib = TrainConfig(**{**base, "episodes": args.calibration_steps, "val_split": None,
                           "checkpoint_every": args.calibration_steps})
    wall = time.perf_counter()
    Trainer(calib, calib_dir, dataset=data, runs=out).run(progress=False, record=False)
    per_step = read_json(calib_dir / "state.json")["seconds"] / args.calibration_steps
    steps = max(1, min(args.max_steps or 10**9, int(args.minutes * 60 / per_step)))
    config = TrainConfig(**{**base, "episodes": steps, "val_every": max(1, steps // 4),
                            "checkpoint_every": max(1, steps // 4)})
    run_dir = out / name
    result = Trainer(config, run_dir, dataset=data, runs=out).run(progress=not args.quiet,
                                                                   resume=(run_dir / "state.json").exists())
    _, method, _ = load_run(run_dir)
    way, shot = spec["test"]
    sampler = EpisodeSampler(data, "test", way, shot, 15, seed=0)
    test = evaluate(method, sampler, args.test_episodes, progress=not args.quiet, device=args.device,
                    precision=args.precision)
    row = {"model": name, "steps": result.steps, "seconds_per_step_calibrated": per_step,
           "train_seconds": result.seconds, "wall_seconds": time.perf_counter() - wall, "device": result.device,
           "peak_memory_mb": result.peak_memory_mb, "peak_memory_kind": result.peak_memory_kind,
           "test": {"way": way, "shot": shot, "episodes": test.episodes, "accuracy": test.accuracy,
                    "ci95": test.ci95, "seconds": test.seconds},
           "best_validation": {"accuracy": result.best_accuracy, "ci95": result.best_ci95},
           "published": spec["published"], "source": spec["source"], "config": config.to_dict()}
    reached = test.accuracy + test.ci95 >= spec["published"]
    row["verdict"] = ("reaches the published accuracy (within its 95% CI)" if reached else
                      f"{spec['published'] - test.accuracy:.1f} points short of the published accuracy")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, mps or cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall minutes per model (default 3)")
    parser.add_argument("--max-steps", type=int, help="at most this many meta-iterations per model")
    parser.add_argument("--calibration-steps", type=int, default=30)
    parser.add_argument("--val-episodes", type=int, default=100)
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/reproduce-gpu", help="folder for the run folders")
    parser.add_argument("--results", default=str(RESULTS), help="folder for reproduce_gpu.{json,md}")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    import torch

    from fewshot import devices
    from fewshot.data import load_dataset

    device = devices.resolve(args.device)  # a missing GPU is a one-line error
    args.device = str(device)
    start = time.perf_counter()
    data = load_dataset("omniglot", None, split_scheme="vinyals")
    out = Path(args.out)
    rows = [run_model(name, MODELS[name], args, data, out) for name in args.models]
    summary = {"benchmark": "reproduce_gpu", "command": " ".join(["python", *sys.argv]),
               "device": devices.describe(device), "precision": args.precision, "torch": torch.__version__,
               "tf32": True, "wall_seconds": time.perf_counter() - start, "results": rows}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "reproduce_gpu.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"`{summary['command']}` on {summary['device']}, {args.precision}, torch {summary['torch']}; "
             f"{summary['wall_seconds'] / 60:.1f} wall minutes in all.", "",
             "| model | meta-iterations | training s | test accuracy (600 episodes) | published | verdict |",
             "|---|---:|---:|---|---:|---|"]
    for r in rows:
        t = r["test"]
        acc = f"{t['accuracy']:.1f} ± {t['ci95']:.1f} %" if not math.isnan(t["accuracy"]) else "—"
        lines.append(f"| {r['model']} | {r['steps']:,} | {r['train_seconds']:.0f} | {acc} ({t['way']}-way "
                     f"{t['shot']}-shot, {t['episodes']} ep.) | {r['published']} % | {r['verdict']} |")
    (results / "reproduce_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
