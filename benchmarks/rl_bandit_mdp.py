"""Bernoulli bandits and random tabular MDPs (Duan et al., 2016, RL², arXiv:1611.02779): MAML-RL per adaptation step.

For each family (``bandit-5``: 5 arms, a rollout is one pull; ``tabular-mdp``: 10
states, 5 actions, horizon 10) a categorical MLP policy (two hidden layers of 100
ReLU units) is meta-trained with ``maml-rl`` by the one trainer under a CPU budget
(one inner policy-gradient step on ``--rollouts`` rollouts, meta-batch 20, Adam on the
outer policy-gradient objective, no validation: the last weights), then adapted on 200
fixed test tasks with 0-3 policy-gradient steps, ``--rollouts`` rollouts per step.
Reported per step: MAML-RL's and a randomly initialised policy's mean return per
rollout with 95 % CIs, beside the references known exactly on the same tasks: the
uniformly random policy and the optimal policy given the task (the best arm; the
MDP's optimal finite-horizon policy by dynamic programming). The optimal reference
knows the task; no policy that must learn it from ``--rollouts`` rollouts per step
can reach it (the Bayes-optimal, Gittins-style learner lies between; it is not
computed here).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/rl_bandit_mdp.py --minutes 1.5

Writes benchmarks/results/rl_bandit_mdp.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fewshot.config import TrainConfig
from fewshot.data import make_sampler
from fewshot.data.tasks import input_shape
from fewshot.evaluate import evaluate
from fewshot.metrics import confidence_interval
from fewshot.runs import build_model, load_run
from fewshot.train import Trainer

RESULTS = Path(__file__).parent / "results"
SETTINGS = {"bandit-5": {"inner_lr": 0.5}, "tabular-mdp": {"inner_lr": 0.5}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.5, help="CPU minutes of training per family")
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--meta-batch", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.001, help="Adam learning rate (outer); 0.01 collapsed the bandit policy")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--runs", default="runs/rl_bandit_mdp")
    parser.add_argument("--out", default=str(RESULTS / "rl_bandit_mdp.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict = {"command": f"python benchmarks/rl_bandit_mdp.py --minutes {args.minutes} --rollouts {args.rollouts} "
                                f"--meta-batch {args.meta_batch} --lr {args.lr} --tasks {args.tasks}",
                     "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, a shared 2-core machine",
                     "families": {}}
    for env, options in SETTINGS.items():
        config = TrainConfig(method="maml-rl", dataset=env, backbone="mlp", shot=args.rollouts, query=args.rollouts,
                             meta_batch=args.meta_batch, episodes=100000, lr=args.lr, val_split=None,
                             checkpoint_every=100, cpu_minutes=args.minutes, method_options=options)
        run_dir = Path(args.runs) / env
        train = Trainer(config, run_dir, runs=args.runs).run(resume=(run_dir / "state.json").exists(), progress=False)
        _, maml, _ = load_run(run_dir)
        torch.manual_seed(0)
        untrained = build_model(config, input_shape(env, None))
        test = make_sampler(env, None, "test", 1, args.rollouts, args.rollouts, seed=0)
        refs = [test.family.expected_returns(task.params) for task in test.suite(args.tasks)]
        entry = {"steps": train.steps, "train_cpu_seconds": round(train.cpu_seconds, 1), "options": options,
                 "train_curve": json.loads((run_dir / "state.json").read_text())["history"]["train"],
                 "references": {k: dict(zip(("return", "ci95"), confidence_interval(np.array([r[k] for r in refs]))))
                                for k in ("random", "optimal")}}
        for name, method in (("maml-rl", maml), ("random init", untrained)):
            method.set_test_options(inner_steps=3)
            started = time.process_time()
            out = evaluate(method, test, args.tasks, progress=False)
            entry[name] = {"by_step": [{"steps": k, "return": m, "ci95": c} for k, (m, c) in enumerate(out.by_step())],
                           "eval_cpu_seconds": round(time.process_time() - started, 1)}
            print(env, name, out.summary(), flush=True)
        print(env, "references", entry["references"], flush=True)
        results["families"][env] = entry
    Path(args.out).write_text(json.dumps(results, indent=1))
    lines = [f"# Bandits and tabular MDPs: mean return per rollout after 0-3 policy-gradient steps "
             f"({args.tasks} test tasks, {args.rollouts} rollouts per step, 95 % CI)", "", f"`{results['command']}`", "",
             f"Machine: {results['machine']}.", ""]
    for env, entry in results["families"].items():
        lines += [f"## {env} (MAML-RL: {entry['steps']} meta-iterations, {entry['train_cpu_seconds'] / 60:.1f} CPU-min)", "",
                  "| policy | 0 steps | 1 step | 2 steps | 3 steps |", "|---|---|---|---|---|"]
        for name in ("maml-rl", "random init"):
            lines.append(f"| {name} | " + " | ".join(f"{s['return']:.3f} ± {s['ci95']:.3f}" for s in entry[name]["by_step"]) + " |")
        for name, ref in entry["references"].items():
            lines.append(f"| {name} policy (exact, every step) | " + " | ".join([f"{ref['return']:.3f} ± {ref['ci95']:.3f}"] * 4) + " |")
        lines.append("")
    Path(args.out).with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
