"""MAML-RL with Adam vs TRPO meta-updates vs RL², at one small equal CPU budget (issue 33).

Methods, each trained by the one trainer under ``--minutes`` CPU-minutes on one thread,
validated every ``val_every`` steps on 20 fixed val tasks (the best weights kept), for
``--seeds`` seeds:

* ``maml-rl adam``: MAML-RL (Finn et al., 2017, arXiv:1703.03400), one policy-gradient
  inner step, second-order meta-gradient, Adam outer optimiser;
* ``maml-rl trpo``: the same with Finn et al.'s TRPO meta-update (max KL 0.01;
  :mod:`fewshot.rl.trpo`);
* ``rl2``: RL² (Duan et al., 2016, arXiv:1611.02779), a 64-unit GRU trained with PPO.

Families and what is compared, on the same seeded test tasks (seed 0, ``test`` split):

* ``navigation-2d`` (horizon 100): MAML-RL's mean return of 20 rollouts before and after
  one policy-gradient step on 20 rollouts; RL²'s return in episodes 1 and 2 of a trial
  (20 trials per task). RL²'s second episode has seen one episode of the task, MAML's
  adapted policy twenty: the rows answer "how good after adapting", not "at equal data".
* ``bandit-5`` (5 Bernoulli arms, means uniform in [0, 1]): RL² plays trials of n = 10
  pulls (Duan et al.'s n = 10, k = 5 setting) and its total reward per trial is put
  beside Duan et al.'s Table 1 numbers for that setting; MAML-RL's reward per pull
  before (the meta-learned policy, 10 pulls) and after one step on those 10 pulls.

    OMP_NUM_THREADS=1 nohup python benchmarks/rl_trpo_rl2.py --family navigation-2d &
    OMP_NUM_THREADS=1 nohup python benchmarks/rl_trpo_rl2.py --family bandit-5 &
    python benchmarks/rl_trpo_rl2.py --report-only

Each family writes ``runs/rl_trpo_rl2/<family>.json`` as its runs finish; every call
then merges what exists into benchmarks/results/rl_trpo_rl2.{json,md}.
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
from fewshot.evaluate import evaluate
from fewshot.io import write_json
from fewshot.metrics import confidence_interval
from fewshot.runs import load_run
from fewshot.train import Trainer

RESULTS = Path(__file__).parent / "results"
METHODS = {"maml-rl adam": ("maml-rl", {"outer": "adam"}), "maml-rl trpo": ("maml-rl", {"outer": "trpo"}),
           "rl2": ("rl2", {})}
FAMILIES = {
    "navigation-2d": {"rollouts": 20, "meta_batch": 10, "lr": 0.01, "val_every": 10, "tasks": 100,
                      "maml": {"inner_lr": 0.1}, "rl2": {"episodes_per_trial": 2, "ppo_lr": 3e-3}},
    "bandit-5": {"rollouts": 10, "meta_batch": 20, "lr": 3e-4, "val_every": 20, "tasks": 200,
                 "maml": {"inner_lr": 0.5}, "rl2": {"episodes_per_trial": 10, "ppo_lr": 3e-3, "gae_lambda": 0.3}},
}
#: Duan et al. (2016), Table 1, n = 10 pulls, k = 5 arms: total reward per trial.
DUAN_BANDIT_N10_K5 = {"random": 5.0, "Gittins index": 6.6, "RL² (Duan et al.)": 6.7}


def train_and_evaluate(family: str, name: str, seed: int, args) -> dict:
    settings = FAMILIES[family]
    method, options = METHODS[name]
    options = {**options, **(settings["rl2"] if method == "rl2" else settings["maml"])}
    config = TrainConfig(method=method, dataset=family, backbone="mlp", shot=settings["rollouts"],
                         query=settings["rollouts"], meta_batch=settings["meta_batch"], episodes=100000,
                         lr=settings["lr"], val_every=settings["val_every"], val_episodes=20,
                         checkpoint_every=settings["val_every"], cpu_minutes=args.minutes, seed=seed,
                         method_options=options)
    run_dir = Path(args.runs) / family / f"{name.replace(' ', '-')}-s{seed}"
    load_before = os.getloadavg()
    train = Trainer(config, run_dir, runs=args.runs).run(resume=(run_dir / "state.json").exists(), progress=False)
    _, model, state = load_run(run_dir)
    if method == "maml-rl":
        model.set_test_options(inner_steps=1)
    test = make_sampler(family, None, "test", 1, settings["rollouts"], settings["rollouts"], seed=0)
    started = time.process_time()
    out = evaluate(model, test, settings["tasks"], progress=False)
    return {"method": method, "options": options, "seed": seed, "steps": train.steps,
            "train_cpu_seconds": round(train.cpu_seconds, 1), "eval_cpu_seconds": round(time.process_time() - started, 1),
            "best_step": state["best"]["step"], "best_val_return": state["best"]["return"],
            "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "per_task": out.per_step.round(5).tolist()}


def run_family(family: str, args) -> None:
    path = Path(args.runs) / f"{family}.json"
    done = json.loads(path.read_text()) if path.exists() else {"family": family, "runs": {}}
    for seed in range(args.seeds):
        for name in METHODS:
            key = f"{name} s{seed}"
            if key in done["runs"]:
                continue
            entry = train_and_evaluate(family, name, seed, args)
            done["runs"][key] = entry
            write_json(path, done)
            by_column = np.asarray(entry["per_task"]).mean(0).round(3).tolist()
            print(family, key, entry["steps"], "steps", entry["train_cpu_seconds"], "CPU-s", by_column, flush=True)


def summarise(family: str, runs: dict) -> dict:
    """Per method: the per-task values averaged over seeds, then each column's mean and 95 % CI over tasks."""
    out = {}
    for name in METHODS:
        mine = [r for k, r in runs.items() if k.startswith(name + " s")]
        if not mine:
            continue
        table = np.mean([np.asarray(r["per_task"]) for r in mine], axis=0)  # (tasks, columns)
        gain = table[:, -1] - table[:, 0]  # after one step / in the trial's last episode, against the first
        if family == "bandit-5" and name == "rl2":
            table = np.concatenate([table, table.sum(1, keepdims=True)], axis=1)  # total over the 10 pulls
        columns = [dict(zip(("mean", "ci95"), confidence_interval(table[:, j]))) for j in range(table.shape[1])]
        out[name] = {"columns": columns, "gain_paired": dict(zip(("mean", "ci95"), confidence_interval(gain))),
                     "seeds": len(mine), "steps": [r["steps"] for r in mine],
                     "train_cpu_minutes": [round(r["train_cpu_seconds"] / 60, 2) for r in mine],
                     "per_seed_last_column": [round(float(np.asarray(r["per_task"])[:, -1].mean()), 4) for r in mine],
                     "loadavg": [r["loadavg_after"][0] for r in mine]}
    return out


def report(args) -> None:
    families = {}
    for family in FAMILIES:
        path = Path(args.runs) / f"{family}.json"
        if path.exists():
            families[family] = summarise(family, json.loads(path.read_text())["runs"])
    command = (f"OMP_NUM_THREADS=1 python benchmarks/rl_trpo_rl2.py --family F --minutes {args.minutes} --seeds "
               f"{args.seeds} (one process per family F), then --report-only")
    results = {"command": command, "note": args.note,
               "minutes": args.minutes, "seeds": args.seeds,
               "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, a shared 2-core machine",
               "loadavg_at_report": [round(x, 2) for x in os.getloadavg()], "families": families,
               "duan_bandit_n10_k5": DUAN_BANDIT_N10_K5}
    write_json(RESULTS / "rl_trpo_rl2.json", results)
    fmt = lambda c: f"{c['mean']:.3f} ± {c['ci95']:.3f}"  # noqa: E731
    lines = ["# Meta-RL at an equal small CPU budget: MAML-RL (Adam, TRPO) and RL²", "",
             f"`{results['command']}`", "", *([args.note, ""] if args.note else []),
             f"Machine: {results['machine']}; {args.minutes} CPU-minutes of training per run, seeds averaged task "
             "by task, 95 % CIs over the test tasks (seed 0, test split). The 1-minute load average during the "
             "runs is listed (the machine is shared: CPU time, not wall time, is the budget).", ""]
    for family, summary in families.items():
        settings = FAMILIES[family]
        head = ("| method | before adapting (MAML: 0 steps; RL²: episode / pull 1) | after (MAML: 1 step; RL²: last "
                "episode / pull) | gain (paired) | steps | CPU-min | load |")
        lines += [f"## {family} ({settings['tasks']} test tasks, {settings['rollouts']} rollouts per step)", "", head,
                  "|---|---|---|---|---|---|---|"]
        for name, s in summary.items():
            cols = s["columns"][:10] if family == "bandit-5" else s["columns"]
            lines.append(f"| {name} | {fmt(cols[0])} | {fmt(cols[-1])} | {fmt(s['gain_paired'])} | {s['steps']} | "
                         f"{s['train_cpu_minutes']} | {s['loadavg']} |")
        if family == "bandit-5" and "rl2" in summary:
            total = summary["rl2"]["columns"][10]
            lines += ["", f"RL², total reward over a trial of n = 10 pulls (k = 5 arms): **{fmt(total)}**; "
                      f"Duan et al.'s Table 1 for n = 10, k = 5: " +
                      ", ".join(f"{k} {v}" for k, v in DUAN_BANDIT_N10_K5.items()) +
                      " (their RL² trained with TRPO for far longer; here a few CPU-minutes)."]
        lines.append("")
    (RESULTS / "rl_trpo_rl2.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), help="train and evaluate this family's runs")
    parser.add_argument("--minutes", type=float, default=1.5, help="CPU minutes of training per run")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--runs", default="runs/rl_trpo_rl2")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--note", default="", help="a remark printed with the results (e.g. how the runs ended)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.family and not args.report_only:
        run_family(args.family, args)
    report(args)


if __name__ == "__main__":
    main()
