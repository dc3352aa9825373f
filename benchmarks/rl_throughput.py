"""Rollout throughput: fewshot's vectorised torch environments against a Python loop over Gymnasium environments.

The same work on each side: B environments of 2D navigation (Finn et al., 2017,
arXiv:1703.03400), each with its own goal, stepped for the horizon (100 steps) with
random actions; throughput is environment steps per CPU-second of this process.

* ``vectorised``: ``Navigation2D().make(goals)``: one tensor operation per step for
  all B environments (also bandit-5 and tabular-mdp);
* ``gymnasium loop (numpy env)``: B instances of a plain NumPy ``gymnasium.Env``
  written for this benchmark (the fastest Python-loop form), stepped one by one;
* ``gymnasium loop (fewshot TaskEnv)``: B instances of :class:`fewshot.rl.gym.TaskEnv`
  (the Gymnasium API over a one-environment tensor batch), stepped one by one;
* ``rollout with policy``: :func:`fewshot.rl.rollout` of the vectorised environments
  under a Gaussian MLP policy (2x100), as maml-rl collects its data.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/rl_throughput.py

Writes benchmarks/results/rl_throughput.{json,md} (``--markdown-only`` rewrites the
table from the JSON without measuring again).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import gymnasium
import numpy as np
import torch

from fewshot.models import MLP
from fewshot.rl import ENV_FAMILIES, Navigation2D, rollout
from fewshot.rl.gym import TaskEnv
from fewshot.rl.policies import sample

RESULTS = Path(__file__).parent / "results"
HORIZON = 100


class NumpyNavigation(gymnasium.Env):
    """2D navigation in plain NumPy, one environment: the Python-loop reference."""

    def __init__(self, goal):
        self.goal = np.asarray(goal, dtype=np.float64)
        self.observation_space = gymnasium.spaces.Box(-10, 10, (2,), np.float32)
        self.action_space = gymnasium.spaces.Box(-0.1, 0.1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = np.zeros(2)
        return self.position.astype(np.float32), {}

    def step(self, action):
        self.position = self.position + np.clip(action, -0.1, 0.1)
        offset = self.position - self.goal
        return (self.position.astype(np.float32), -float(np.hypot(*offset)), bool(np.all(np.abs(offset) < 0.01)),
                False, {})


def timed(fn) -> float:
    start = time.process_time()
    fn()
    return max(time.process_time() - start, 1e-9)


def vectorised(family, count: int) -> float:
    rng = np.random.default_rng(0)
    params = torch.stack([family.sample_task(rng) for _ in range(count)])
    generator = torch.Generator().manual_seed(0)
    env = family.make(params, generator)

    def run():
        env.reset()
        for _ in range(family.horizon):
            if family.action_kind == "continuous":
                action = torch.rand((count, family.action_dim), generator=generator) * 0.2 - 0.1
            else:
                action = torch.randint(0, family.action_dim, (count,), generator=generator)
            env.step(action)

    return count * family.horizon / timed(run)


def python_loop(make, count: int) -> float:
    rng = np.random.default_rng(0)
    envs = [make(rng.uniform(-0.5, 0.5, size=2)) for _ in range(count)]
    actions = rng.uniform(-0.1, 0.1, size=(HORIZON, count, 2)).astype(np.float32)

    def run():
        for i, env in enumerate(envs):
            env.reset(seed=i)
        for t in range(HORIZON):
            for env, a in zip(envs, actions[t]):
                env.step(a)

    return count * HORIZON / timed(run)


def with_policy(count: int) -> float:
    family = Navigation2D()
    torch.manual_seed(0)
    net = MLP(2, (100, 100), out_features=2)
    log_std = torch.zeros(2)
    rng = np.random.default_rng(0)
    params = torch.stack([family.sample_task(rng) for _ in range(count)])
    generator = torch.Generator().manual_seed(0)

    def act(obs):
        with torch.no_grad():
            return sample("gaussian", net(obs), log_std, generator)

    return count * HORIZON / timed(lambda: rollout(family.make(params, generator), act, HORIZON))


def main() -> None:
    torch.set_num_threads(1)
    out = RESULTS / "rl_throughput.json"
    if "--markdown-only" in sys.argv:  # rewrite the table from the measured results
        write_markdown(json.loads(out.read_text()), out)
        return
    rows = []
    nav = Navigation2D()
    for count in (1, 20, 400, 4000):
        row = {"envs": count, "vectorised": vectorised(nav, count),
               "rollout with policy": with_policy(count)}
        if count <= 400:  # the loops take minutes beyond this
            row["gymnasium loop (numpy env)"] = python_loop(NumpyNavigation, count)
            row["gymnasium loop (fewshot TaskEnv)"] = python_loop(lambda g: TaskEnv(nav, torch.tensor(g)), count)
        rows.append(row)
        print(row, flush=True)
    others = {name: vectorised(ENV_FAMILIES[name], 4000) for name in ("bandit-5", "tabular-mdp")}
    print(others)
    results = {"command": "python benchmarks/rl_throughput.py", "unit": "environment steps per CPU-second",
               "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, a shared 2-core machine",
               "navigation_2d": rows, "vectorised_4000_envs": others}
    out.write_text(json.dumps(results, indent=1))
    write_markdown(results, out)


def write_markdown(results: dict, out: Path) -> None:
    rows, others = results["navigation_2d"], results["vectorised_4000_envs"]
    columns = ["vectorised", "rollout with policy", "gymnasium loop (numpy env)", "gymnasium loop (fewshot TaskEnv)"]
    lines = ["# Rollout throughput: environment steps per CPU-second (2D navigation, horizon 100, random actions)", "",
             "`python benchmarks/rl_throughput.py`", "", f"Machine: {results['machine']}.", "",
             "| environments | " + " | ".join(columns) + " | speed-up vectorised / numpy loop |",
             "|---|" + "---|" * (len(columns) + 1)]
    for row in rows:
        cells = [f"{row[c]:,.0f}" if c in row else "not run" for c in columns]
        ratio = f"{row['vectorised'] / row['gymnasium loop (numpy env)']:.2g}x" if "gymnasium loop (numpy env)" in row else ""
        lines.append(f"| {row['envs']} | " + " | ".join(cells) + f" | {ratio} |")
    lines += ["", "Vectorised, 4000 environments: " + ", ".join(f"{k} {v:,.0f}" for k, v in others.items()) + "."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
