"""Why second-order MAML-RL on 2D navigation degrades late (issue 33): a diagnostic run.

``rl_navigation.md`` reported that second-order MAML-RL with Adam (rate 0.01, meta-batch
20) peaked near iteration 75 and fell to returns of -400 to -600 after ~250 iterations
(a point running at full speed away from its goal for the whole episode). This script
retraces that with the method's own loss and Adam (no trainer: it records, every
``--every`` iterations, what the trainer does not):

* the return of the pre-update policy and after one inner step on the meta-batch;
* the pre-update policy's mean action size |μ(s)| on the states it visits, and the share
  of sampled actions the environment clips (|a| > 0.1 on an axis): once μ sits far
  outside the box every action is clipped, the return no longer depends on small
  changes of μ, and the policy gradient carries only noise;
* the learned log standard deviation and the size of the inner step's change of μ
  (what one policy-gradient step of rate ``--inner-lr`` does to the mean action);
* the norm of the meta-gradient.

``--lr`` may list several rates (each trained from the same initialisation and the
same meta-batches). Writes benchmarks/results/rl_divergence.{json,md}.

    OMP_NUM_THREADS=1 python benchmarks/rl_divergence.py --lr 0.01 0.003 --iterations 400 --every 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fewshot.config import TrainConfig
from fewshot.data import make_sampler
from fewshot.data.tasks import input_shape
from fewshot.runs import build_model

RESULTS = Path(__file__).parent / "results"
ENV = "navigation-2d"


def probe(method, episodes) -> dict:
    """Statistics of the pre-update policy and of one inner step on ``episodes``."""
    generators = [t.generator() for t in episodes]
    start = method.parameters_dict(detach=True)
    batches = method.sample_tasks([start] * len(episodes), episodes, episodes[0].shot, generators)
    mean_before, mean_after, step_size, clipped = [], [], [], []
    for batch in batches:
        flat = batch.obs.reshape(-1, batch.obs.shape[-1])
        mask = batch.mask.reshape(-1) > 0
        with torch.no_grad():
            mu = method(flat)[mask]  # the policy's mean action at its current weights
        grads = {n: p.detach().requires_grad_(True) for n, p in start.items()}
        fast = method.inner_update(grads, batch, create_graph=False)
        with torch.no_grad():
            mu_after = torch.func.functional_call(method, {n: p.detach() for n, p in fast.items()}, (flat,))[mask]
        actions = batch.actions.reshape(-1, batch.actions.shape[-1])[mask]
        mean_before.append(float(mu.abs().mean()))
        mean_after.append(float(mu_after.abs().mean()))
        step_size.append(float((mu_after - mu).norm(dim=-1).mean()))
        clipped.append(float((actions.abs() > 0.1).float().mean()))
    return {"mean_action": float(np.mean(mean_before)), "mean_action_after_step": float(np.mean(mean_after)),
            "inner_step_change_of_mean": float(np.mean(step_size)), "clipped_share": float(np.mean(clipped)),
            "log_std": [round(float(v), 3) for v in start["log_std"]]}


def train(lr: float, args) -> dict:
    config = TrainConfig(method="maml-rl", dataset=ENV, backbone="mlp", shot=args.rollouts, query=args.rollouts,
                         meta_batch=args.meta_batch, lr=lr, seed=args.seed,
                         method_options={"inner_lr": args.inner_lr})
    torch.manual_seed(args.seed)
    method = build_model(config, input_shape(ENV, None))
    sampler = make_sampler(ENV, None, "train", 1, args.rollouts, args.rollouts, seed=args.seed)
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=lr)
    rows, window, started, load = [], [], time.process_time(), os.getloadavg()[0]
    for step in range(args.iterations + 1):
        episodes = sampler.batch(step, args.meta_batch)
        optimizer.zero_grad(set_to_none=True)
        loss, metrics = method.loss(episodes)
        loss.backward()
        norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in method.parameters() if p.grad is not None)))
        window.append(metrics["return"])
        if step % args.every == 0:
            # One meta-batch is noisy: the mean return after one step over the iterations
            # since the last row says more about the trend.
            row = {"iteration": step, "return_before": round(metrics["return_before"], 2),
                   "return_after": round(metrics["return"], 2),
                   "return_after_window": round(float(np.mean(window)), 2), "meta_gradient_norm": round(norm, 4),
                   **probe(method, episodes)}
            window = []
            rows.append(row)
            print(lr, row, flush=True)
        if step < args.iterations:
            optimizer.step()
    return {"lr": lr, "rows": rows, "cpu_seconds": round(time.process_time() - started, 1),
            "loadavg": [round(load, 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.01, 0.003])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--meta-batch", type=int, default=10)
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--inner-lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = [train(lr, args) for lr in args.lr]
    results = {"command": "OMP_NUM_THREADS=1 python benchmarks/rl_divergence.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, a shared 2-core machine", "runs": runs}
    (RESULTS / "rl_divergence.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Second-order MAML-RL on 2D navigation: what goes with the late degradation", "",
             f"`{results['command']}`", "", f"Machine: {results['machine']}. Statistics on each logged "
             "iteration's own meta-batch (training tasks), before its update.", ""]
    for run in runs:
        lines += [f"## Adam, rate {run['lr']} ({run['cpu_seconds'] / 60:.1f} CPU-min, 1-minute load "
                  f"{run['loadavg'][0]} at the start, {run['loadavg'][1]} at the end)", "",
                  "| iteration | return before | after 1 step | after 1 step, mean since last row | mean abs(μ) | clipped actions | change of μ by the inner "
                  "step | log σ | meta-gradient norm |", "|---|---|---|---|---|---|---|---|---|"]
        for r in run["rows"]:
            lines.append(f"| {r['iteration']} | {r['return_before']} | {r['return_after']} | {r['return_after_window']} | "
                         f"{r['mean_action']:.3f} | "
                         f"{100 * r['clipped_share']:.0f} % | {r['inner_step_change_of_mean']:.3f} | {r['log_std']} | "
                         f"{r['meta_gradient_norm']:.3g} |")
        lines.append("")
    (RESULTS / "rl_divergence.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
