"""What a half-cheetah meta-iteration costs here (issue 33): the CPU time of maml-rl's
meta-update on ``half-cheetah-direction`` and ``half-cheetah-velocity``, at Finn et al.'s
per-task settings (arXiv:1703.03400, section 5.3 and appendix: 20 rollouts of 200 steps
per inner and outer batch, one inner step of 0.1, a 2×100 ReLU Gaussian policy) and a
small meta-batch, and the CPU time the paper's meta-batch of 40 tasks would take per
iteration on one thread, by proportion (rollouts are a Python loop over MuJoCo
environments: their cost grows with the number of tasks).

    OMP_NUM_THREADS=1 python benchmarks/rl_cheetah_cost.py --tasks 2 --iterations 2

Writes benchmarks/results/rl_cheetah_cost.{json,md}; needs ``pip install 'fewshot[locomotion]'``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from fewshot.errors import ConfigError
from fewshot.io import write_json
from fewshot.methods import MAMLRL
from fewshot.models import MLP
from fewshot.rl import sampler_class
from fewshot.rl.locomotion import available, half_cheetah_direction, half_cheetah_velocity

RESULTS = Path(__file__).parent / "results"
ROLLOUTS, PAPER_META_BATCH = 20, 40


def measure(family, args) -> dict:
    torch.manual_seed(0)
    policy = MAMLRL(MLP(family.obs_dim, [100, 100], out_features=family.action_dim), policy="gaussian",
                    image_shape=(family.obs_dim,), inner_lr=0.1)
    sampler = sampler_class(family)(ROLLOUTS, ROLLOUTS, seed=0)
    seconds, returns = [], []
    for step in range(args.iterations):
        started = time.process_time()
        loss, metrics = policy.loss(sampler.batch(step, args.tasks))
        loss.backward()
        seconds.append(time.process_time() - started)
        returns.append((round(metrics["return_before"], 1), round(metrics["return"], 1)))
    per_task = sum(seconds) / len(seconds) / args.tasks
    steps = args.tasks * 2 * ROLLOUTS * family.horizon  # inner and outer rollouts
    return {"family": family.name, "cpu_seconds_per_iteration": [round(s, 2) for s in seconds],
            "env_steps_per_iteration": steps, "env_steps_per_cpu_second": round(steps / (sum(seconds) / len(seconds))),
            "paper_meta_batch_cpu_seconds_per_iteration": round(per_task * PAPER_META_BATCH, 1),
            "return_before_and_after": returns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2, help="meta-batch measured")
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()
    if available() is not None:
        raise ConfigError(f"half-cheetah cannot run here: {available()}")
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:  # MuJoCo writes MUJOCO_LOG.TXT to the working folder
        here = os.getcwd()
        os.chdir(folder)
        try:
            rows = [measure(f, args) for f in (half_cheetah_direction(), half_cheetah_velocity())]
        finally:
            os.chdir(here)
    results = {"command": f"OMP_NUM_THREADS=1 python benchmarks/rl_cheetah_cost.py --tasks {args.tasks} "
                          f"--iterations {args.iterations}",
               "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, a shared 2-core machine",
               "loadavg": round(load, 2), "rollouts": ROLLOUTS, "meta_batch": args.tasks, "rows": rows}
    write_json(RESULTS / "rl_cheetah_cost.json", results)
    lines = ["# Half-cheetah: the CPU cost of one maml-rl meta-iteration", "", f"`{results['command']}`", "",
             f"Machine: {results['machine']}, 1-minute load {results['loadavg']}. Meta-batch of {args.tasks} tasks, "
             f"{ROLLOUTS} rollouts of 200 steps per inner and outer batch, second-order, a 2×100 Gaussian policy; "
             f"the last column scales the CPU per task to Finn et al.'s meta-batch of {PAPER_META_BATCH}.", "",
             "| family | CPU-s per iteration | environment steps per iteration | steps per CPU-s | "
             f"CPU-s per iteration at meta-batch {PAPER_META_BATCH} |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['cpu_seconds_per_iteration']} | {r['env_steps_per_iteration']:,} | "
                     f"{r['env_steps_per_cpu_second']:,} | {r['paper_meta_batch_cpu_seconds_per_iteration']} |")
    (RESULTS / "rl_cheetah_cost.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
