"""2D navigation over seeds: MAML-RL vs RL² vs the pretrained and random policies, intervals across seeds (issue 33).

The earlier navigation tables (``rl_navigation.md``, ``rl_trpo_rl2.md``) are one seed,
their intervals over test tasks: they say how sure the mean over those tasks is for
that one trained policy, not how much another training seed would move it. Here each
method is trained with ``--seeds`` seeds (0, 1, ...), each seed evaluated on the same
100 test tasks (seed 0, ``test`` split), and the unit of the interval is the seed:
mean over seeds ± the 95 % t-interval of the per-seed means (t with seeds - 1 degrees
of freedom), with the per-seed means listed.

Methods, each trained by the one trainer under ``--minutes`` CPU-minutes on one thread,
validated every 10 steps on 20 fixed val tasks (best weights kept):

* ``maml-rl``: MAML-RL (Finn et al., 2017, arXiv:1703.03400), one policy-gradient inner
  step of size 0.1 on 20 rollouts, second-order meta-gradient, Adam outer (rate 0.01),
  meta-batch 10;
* ``maml-rl-trpo``: the same with Finn et al.'s TRPO meta-update instead of Adam (KL
  bound 0.01, conjugate gradient and line search; :mod:`fewshot.rl.trpo`);
* ``pretrained``: the same policy trained jointly on all tasks (``inner_steps=0``);
* ``rl2``: RL² (Duan et al., 2016, arXiv:1611.02779), a GRU trained with PPO, trials of
  2 episodes;
* ``random``: the untrained initialisation of the MAML-RL policy of that seed.

MAML-RL, pretrained and random are adapted at test time with 0-3 policy-gradient steps
(size 0.1, 20 rollouts per step); RL² plays trials of 4 episodes (episodes 1-4 are
its "0-3 steps": the trial's memory, no gradient). RL²'s episode k+1 has seen k
episodes of the task, MAML's policy after k steps has seen 20 k.

    OMP_NUM_THREADS=1 nohup python benchmarks/rl_seeds.py --minutes 1.0 --seeds 3 &

Writes runs/rl_seeds/runs.json as runs finish (a rerun skips them) and
benchmarks/results/rl_seeds.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fewshot.config import TrainConfig
from fewshot.data import make_sampler
from fewshot.data.tasks import input_shape
from fewshot.evaluate import evaluate
from fewshot.io import write_json
from fewshot.runs import build_model, load_run
from fewshot.train import Trainer

RESULTS = Path(__file__).parent / "results"
ENV = "navigation-2d"
ROLLOUTS, TASKS, STEPS = 20, 100, 3
METHODS = {"maml-rl": ("maml-rl", {"inner_lr": 0.1}), "pretrained": ("maml-rl", {"inner_lr": 0.1, "inner_steps": 0}),
           "maml-rl-trpo": ("maml-rl", {"inner_lr": 0.1, "outer": "trpo"}),
           "rl2": ("rl2", {"episodes_per_trial": 2, "ppo_lr": 3e-3})}
#: Two-sided 95 % Student t quantiles by degrees of freedom (seeds - 1).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def config_for(name: str, seed: int, minutes: float) -> TrainConfig:
    method, options = METHODS[name]
    return TrainConfig(method=method, dataset=ENV, backbone="mlp", shot=ROLLOUTS, query=ROLLOUTS, meta_batch=10,
                       episodes=100000, lr=0.01, val_every=10, val_episodes=20, checkpoint_every=10,
                       cpu_minutes=minutes, seed=seed, method_options=options)


def run_one(name: str, seed: int, args) -> dict:
    test = make_sampler(ENV, None, "test", 1, ROLLOUTS, ROLLOUTS, seed=0)
    load_before = os.getloadavg()
    if name == "random":
        torch.manual_seed(seed)
        model = build_model(config_for("maml-rl", seed, args.minutes), input_shape(ENV, None))
        entry = {"steps": 0, "train_cpu_seconds": 0.0, "val_curve": []}
    else:
        config = config_for(name, seed, args.minutes)
        run_dir = Path(args.runs) / f"{name}-s{seed}"
        train = Trainer(config, run_dir, runs=args.runs).run(resume=(run_dir / "state.json").exists(), progress=False)
        _, model, state = load_run(run_dir)
        entry = {"steps": train.steps, "train_cpu_seconds": round(train.cpu_seconds, 1),
                 "best_step": state["best"]["step"], "val_curve": state["history"]["val"]}
    model.set_test_options(inner_steps=STEPS)
    started = time.process_time()
    out = evaluate(model, test, TASKS, progress=False)
    entry.update(eval_cpu_seconds=round(time.process_time() - started, 1),
                 by_step=out.per_step.mean(0).round(4).tolist(),
                 loadavg=[round(x, 2) for x in load_before])
    return entry


def across_seeds(values: list[float]) -> dict:
    """Mean over seeds and the half-width of the 95 % t-interval of the per-seed values."""
    v = np.asarray(values, dtype=np.float64)
    half = T95[len(v) - 1] * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else math.nan
    return {"mean": round(float(v.mean()), 3), "ci95": round(float(half), 3), "per_seed": [round(float(x), 3) for x in v]}


def summarise(runs: dict, seeds: int) -> dict:
    out = {}
    for name in (*METHODS, "random"):
        mine = [runs[f"{name} s{s}"] for s in range(seeds) if f"{name} s{s}" in runs]
        if not mine:
            continue
        table = np.asarray([r["by_step"] for r in mine])  # (seeds, steps + 1)
        out[name] = {"seeds": len(mine), "by_step": [across_seeds(table[:, k]) for k in range(table.shape[1])],
                     "gain_step1": across_seeds(table[:, 1] - table[:, 0]),
                     "steps": [r["steps"] for r in mine],
                     "train_cpu_minutes": [round(r["train_cpu_seconds"] / 60, 2) for r in mine],
                     "loadavg": [r["loadavg"][0] for r in mine]}
    return out


def report(runs: dict, args) -> None:
    summary = summarise(runs, args.seeds)
    cpu = sum(r["train_cpu_seconds"] + r["eval_cpu_seconds"] for r in runs.values()) / 60
    results = {"command": f"OMP_NUM_THREADS=1 python benchmarks/rl_seeds.py --minutes {args.minutes} --seeds {args.seeds}",
               "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, a shared 2-core machine",
               "env": ENV, "test_tasks": TASKS, "rollouts": ROLLOUTS, "minutes": args.minutes, "seeds": args.seeds,
               "total_cpu_minutes": round(cpu, 2), "summary": summary, "runs": runs}
    write_json(RESULTS / "rl_seeds.json", results)
    fmt = lambda c: f"{c['mean']:.1f} ± {c['ci95']:.1f}"  # noqa: E731
    lines = [f"# 2D navigation over {args.seeds} training seeds: return after 0-{STEPS} adaptation steps", "",
             f"`{results['command']}`", "",
             f"Machine: {results['machine']}. {args.minutes} CPU-minute(s) of training per run; every seed is "
             f"evaluated on the same {TASKS} test tasks (seed 0, test split), {ROLLOUTS} rollouts per step. "
             "Cells: mean over seeds ± the 95 % t-interval across seeds (the seed is the unit; per-seed means in "
             f"the JSON). RL²'s columns are episodes 1-{STEPS + 1} of a trial (memory, no gradient step). "
             f"Total CPU for all runs, training and evaluation: {results['total_cpu_minutes']} min.", "",
             "| policy | 0 steps | 1 step | 2 steps | 3 steps | gain at step 1 | per-seed return after 1 step | "
             "meta-iterations | CPU-min | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        cells = " | ".join(fmt(c) for c in s["by_step"])
        lines.append(f"| {name} | {cells} | {s['gain_step1']['mean']:+.1f} ± {s['gain_step1']['ci95']:.1f} | "
                     f"{s['by_step'][1]['per_seed']} | {s['steps']} | {s['train_cpu_minutes']} | {s['loadavg']} |")
    (RESULTS / "rl_seeds.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="CPU minutes of training per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--runs", default="runs/rl_seeds")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = Path(args.runs) / "runs.json"
    runs = json.loads(path.read_text()) if path.exists() else {}
    if not args.report_only:
        for seed in range(args.seeds):
            for name in (*METHODS, "random"):
                key = f"{name} s{seed}"
                if key not in runs:
                    runs[key] = run_one(name, seed, args)
                    write_json(path, runs)
                    print(key, runs[key]["steps"], "steps", runs[key]["train_cpu_seconds"], "CPU-s",
                          runs[key]["by_step"], flush=True)
    report(runs, args)


if __name__ == "__main__":
    main()
