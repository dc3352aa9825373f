"""Bandits and tabular MDPs as in Duan et al.'s RL² tables (arXiv:1611.02779, Tables 1-2), honestly reduced (issue 33).

Duan et al. compare RL² with classic algorithms on two families, at several horizons:

* Bernoulli bandits, k arms with success probabilities uniform in [0, 1], n pulls
  (Table 1: total reward per trial; e.g. n = 10, k = 5: random 5.0, Gittins index 6.6,
  RL² 6.7);
* random tabular MDPs, 10 states, 5 actions, episodes of 10 steps, transitions from a
  flat Dirichlet, mean rewards N(1, 1) observed with unit Gaussian noise, n episodes
  (Table 2: total reward over the n episodes).

Here, at one setting of each (bandits n = 10, k = 5; MDPs n = 10 episodes), on the
seeded test tasks of fewshot's ``bandit-5`` and ``tabular-mdp`` families (seed 0,
``test`` split), the classic algorithms we can compute are run beside RL²:

* ``random``: the uniform policy, exact expectation;
* bandits: ``UCB1`` (Auer, Cesa-Bianchi and Fischer, 2002: each arm once, then the
  largest mean + sqrt(2 ln t / n_i)); ``Thompson sampling`` (Beta(1, 1) priors);
  ``Bayes-optimal`` (the exact finite-horizon optimum under the uniform prior, by
  dynamic programming over the posterior counts: what Gittins indices approximate);
* MDPs: ``PSRL`` (posterior sampling, Osband, Russo and Van Roy, 2013,
  arXiv:1306.0940, with the generating prior: Dirichlet(1) transitions, N(1, 1) mean
  rewards with unit noise; one MDP drawn per episode, its optimal finite-horizon policy
  followed);
* ``oracle``: the optimal policy of the task itself (knows the arm means / the MDP),
  exact expectation: an upper bound no learner reaches.

Simulated baselines average ``--repeats`` independent runs per task. RL² (fewshot's
``rl2``: a 64-unit GRU trained with PPO, Duan et al. used a larger GRU and TRPO for far
longer) is trained ``--seeds`` times for ``--bandit-minutes`` / ``--mdp-minutes``
CPU-minutes (one thread) on the families' train tasks with trials of n episodes, then
plays ``--trials`` trials of every test task from a zero hidden state. Cells are the
mean total reward per trial over test tasks ± the 95 % interval over tasks; RL²'s
per-seed means and the interval across seeds are given too.

    OMP_NUM_THREADS=1 nohup python benchmarks/rl_duan.py &

Writes runs/rl_duan/runs.json as pieces finish (a rerun skips them) and
benchmarks/results/rl_duan.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
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
from fewshot.evaluate import evaluate
from fewshot.io import write_json
from fewshot.metrics import confidence_interval
from fewshot.runs import load_run
from fewshot.train import Trainer

RESULTS = Path(__file__).parent / "results"
PULLS, EPISODES = 10, 10  # bandit trial: n = 10 pulls of k = 5 arms; MDP trial: n = 10 episodes
#: Duan et al. (2016), Table 1, n = 10, k = 5 (the numbers this repository quoted before, rl_trpo_rl2.md).
DUAN_BANDIT = {"random": 5.0, "Gittins index": 6.6, "RL² (Duan et al.)": 6.7}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}
RL2 = {"bandit-5": {"rollouts": 10, "meta_batch": 20, "tasks": 200,
                    "options": {"episodes_per_trial": PULLS, "ppo_lr": 3e-3, "gae_lambda": 0.3}},
       "tabular-mdp": {"rollouts": 5, "meta_batch": 10, "tasks": 100,
                       "options": {"episodes_per_trial": EPISODES, "ppo_lr": 3e-3, "gae_lambda": 0.3}}}


def test_params(family: str, tasks: int) -> np.ndarray:
    sampler = make_sampler(family, None, "test", 1, 1, 1, seed=0)
    return np.stack([sampler.episode(i).params.double().numpy() for i in range(tasks)])


# -- bandits --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def bayes_value(arms: tuple, left: int) -> float:
    """Expected reward of the Bayes-optimal policy over ``left`` pulls from posterior counts
    ``arms`` (a sorted tuple of (successes, failures); arms are exchangeable under the prior)."""
    if left == 0:
        return 0.0
    return max(_pull_value(arms, i, left) for i in range(len(arms)) if i == 0 or arms[i] != arms[i - 1])


def _pull_value(arms: tuple, i: int, left: int) -> float:
    s, f = arms[i]
    p = (s + 1) / (s + f + 2)
    win = tuple(sorted(arms[:i] + ((s + 1, f),) + arms[i + 1:]))
    lose = tuple(sorted(arms[:i] + ((s, f + 1),) + arms[i + 1:]))
    return p * (1 + bayes_value(win, left - 1)) + (1 - p) * bayes_value(lose, left - 1)


def bandit_runs(means: np.ndarray, policy: str, pulls: int, repeats: int, rng: np.random.Generator) -> np.ndarray:
    """Total reward of ``repeats`` runs of ``policy`` on each task (rows of ``means``): ``(tasks,)`` means."""
    tasks, k = means.shape
    out = np.zeros(tasks)
    for t in range(tasks):
        total = 0.0
        for _ in range(repeats):
            succ, fail = np.zeros(k), np.zeros(k)
            for step in range(pulls):
                if policy == "UCB1":
                    n = succ + fail
                    arm = int(np.argmin(n)) if n.min() == 0 else int(np.argmax(succ / n + np.sqrt(2 * math.log(step) / n)))
                elif policy == "Thompson sampling":
                    arm = int(np.argmax(rng.beta(succ + 1, fail + 1)))
                else:  # Bayes-optimal: the arm of largest value, ties to the lowest index
                    order = sorted(range(k), key=lambda j: (succ[j], fail[j]))
                    arms = tuple((int(succ[j]), int(fail[j])) for j in order)
                    values = [_pull_value(arms, i, pulls - step) for i in range(k)]
                    arm = order[int(np.argmax(values))]
                reward = float(rng.random() < means[t, arm])
                succ[arm] += reward
                fail[arm] += 1 - reward
                total += reward
        out[t] = total / repeats
    return out


# -- tabular MDPs -----------------------------------------------------------------------------

def mdp_tables(params: np.ndarray, states: int = 10, actions: int = 5) -> tuple[np.ndarray, np.ndarray]:
    cut = states * actions * states
    return params[:cut].reshape(states, actions, states), params[cut:].reshape(states, actions)


def plan(transitions: np.ndarray, rewards: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Finite-horizon backward induction: ``(policy (horizon, S) of actions, value of each state at t = 0)``."""
    value = np.zeros(rewards.shape[0])
    policy = np.zeros((horizon, rewards.shape[0]), dtype=int)
    for t in reversed(range(horizon)):
        q = rewards + transitions @ value
        policy[t], value = q.argmax(1), q.max(1)
    return policy, value


def exact_mdp(params: np.ndarray, horizon: int = 10) -> dict[str, float]:
    transitions, rewards = mdp_tables(params)
    best = plan(transitions, rewards, horizon)[1][0]
    rand = np.zeros(rewards.shape[0])
    for _ in range(horizon):
        rand = (rewards + transitions @ rand).mean(1)
    return {"random": float(rand[0]), "oracle": float(best)}


def psrl_runs(params: np.ndarray, episodes: int, repeats: int, rng: np.random.Generator,
              horizon: int = 10) -> float:
    """Mean total reward of PSRL over ``episodes`` episodes of one task (``repeats`` runs)."""
    transitions, rewards = mdp_tables(params)
    s_count, a_count = rewards.shape
    total = 0.0
    for _ in range(repeats):
        counts = np.zeros((s_count, a_count, s_count))
        r_sum, r_n = np.zeros((s_count, a_count)), np.zeros((s_count, a_count))
        for _ in range(episodes):
            sampled_t = np.stack([[rng.dirichlet(1 + counts[s, a]) for a in range(a_count)] for s in range(s_count)])
            # N(1, 1) prior on the mean, unit noise: the posterior is N((1 + Σr) / (1 + n), 1 / (1 + n)).
            sampled_r = rng.normal((1 + r_sum) / (1 + r_n), 1 / np.sqrt(1 + r_n))
            policy, _ = plan(sampled_t, sampled_r, horizon)
            state = 0
            for t in range(horizon):
                action = policy[t, state]
                reward = rewards[state, action] + rng.normal()
                following = rng.choice(s_count, p=transitions[state, action] / transitions[state, action].sum())
                counts[state, action, following] += 1
                r_sum[state, action] += reward
                r_n[state, action] += 1
                total += reward
                state = following
    return total / repeats


# -- RL² ----------------------------------------------------------------------------------------

def train_rl2(family: str, seed: int, minutes: float, args) -> dict:
    settings = RL2[family]
    config = TrainConfig(method="rl2", dataset=family, backbone="mlp", shot=settings["rollouts"],
                         query=settings["rollouts"], meta_batch=settings["meta_batch"], episodes=100000,
                         val_every=20, val_episodes=20, checkpoint_every=20, cpu_minutes=minutes, seed=seed,
                         method_options=settings["options"])
    run_dir = Path(args.runs) / f"{family}-rl2-s{seed}"
    load = os.getloadavg()[0]
    train = Trainer(config, run_dir, runs=args.runs).run(resume=(run_dir / "state.json").exists(), progress=False)
    _, model, state = load_run(run_dir)
    test = make_sampler(family, None, "test", 1, args.trials, args.trials, seed=0)
    started = time.process_time()
    out = evaluate(model, test, settings["tasks"], progress=False)  # columns: episodes (pulls) of a trial
    return {"steps": train.steps, "train_cpu_seconds": round(train.cpu_seconds, 1),
            "eval_cpu_seconds": round(time.process_time() - started, 1), "best_step": state["best"]["step"],
            "loadavg": round(load, 2), "per_task_total": out.per_step.sum(1).round(4).tolist(),
            "by_episode": out.per_step.mean(0).round(4).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bandit-minutes", type=float, default=0.5)
    parser.add_argument("--mdp-minutes", type=float, default=0.75)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=50, help="runs per task of a simulated baseline")
    parser.add_argument("--trials", type=int, default=10, help="RL² trials per test task")
    parser.add_argument("--runs", default="runs/rl_duan")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = Path(args.runs) / "runs.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(path.read_text()) if path.exists() else {}
    rng = np.random.default_rng(0)
    pieces = {"bandit baselines": lambda: bandit_baselines(args, rng), "mdp baselines": lambda: mdp_baselines(args, rng)}
    for seed in range(args.seeds):
        pieces[f"bandit-5 rl2 s{seed}"] = functools.partial(train_rl2, "bandit-5", seed, args.bandit_minutes, args)
        pieces[f"tabular-mdp rl2 s{seed}"] = functools.partial(train_rl2, "tabular-mdp", seed, args.mdp_minutes, args)
    if not args.report_only:
        for key, piece in pieces.items():
            if key not in done:
                started = time.process_time()
                done[key] = piece()
                done[key].setdefault("cpu_seconds", round(time.process_time() - started, 1))
                write_json(path, done)
                print(key, {k: v for k, v in done[key].items() if not k.startswith("per_task")}, flush=True)
    report(done, args)


def bandit_baselines(args, rng) -> dict:
    means = test_params("bandit-5", RL2["bandit-5"]["tasks"])
    out = {"random": (means.mean(1) * PULLS).tolist(), "oracle": (means.max(1) * PULLS).tolist()}
    for policy in ("UCB1", "Thompson sampling", "Bayes-optimal"):
        out[policy] = bandit_runs(means, policy, PULLS, args.repeats, rng).round(4).tolist()
    return {"per_task": out, "bayes_optimal_prior_expectation": bayes_value(((0, 0),) * means.shape[1], PULLS)}


def mdp_baselines(args, rng) -> dict:
    params = test_params("tabular-mdp", RL2["tabular-mdp"]["tasks"])
    exact = [exact_mdp(p) for p in params]
    out = {"random": [EPISODES * e["random"] for e in exact], "oracle": [EPISODES * e["oracle"] for e in exact],
           "PSRL": [round(psrl_runs(p, EPISODES, max(1, args.repeats // 5), rng), 4) for p in params]}
    return {"per_task": out}


def report(done: dict, args) -> None:
    fmt = lambda m, c: f"{m:.2f} ± {c:.2f}"  # noqa: E731
    tables, cpu = {}, sum(v.get("cpu_seconds", 0) for v in done.values()) / 60
    for family, base in (("bandit-5", "bandit baselines"), ("tabular-mdp", "mdp baselines")):
        rows = {}
        for name, values in done.get(base, {}).get("per_task", {}).items():
            rows[name] = dict(zip(("mean", "ci95"), confidence_interval(np.asarray(values))))
        seeds = [done[f"{family} rl2 s{s}"] for s in range(args.seeds) if f"{family} rl2 s{s}" in done]
        if seeds:
            per_task = np.mean([s["per_task_total"] for s in seeds], axis=0)
            per_seed = [float(np.mean(s["per_task_total"])) for s in seeds]
            half = T95[len(seeds) - 1] * np.std(per_seed, ddof=1) / math.sqrt(len(seeds)) if len(seeds) > 1 else math.nan
            rows["RL² (fewshot)"] = {**dict(zip(("mean", "ci95"), confidence_interval(per_task))),
                                     "per_seed": [round(x, 3) for x in per_seed], "across_seeds_ci95": round(float(half), 3),
                                     "steps": [s["steps"] for s in seeds],
                                     "train_cpu_minutes": [round(s["train_cpu_seconds"] / 60, 2) for s in seeds],
                                     "loadavg": [s["loadavg"] for s in seeds]}
        tables[family] = rows
    results = {"command": "OMP_NUM_THREADS=1 python benchmarks/rl_duan.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("runs", "report_only")),
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, a shared 2-core machine",
        "total_cpu_minutes": round(cpu, 2), "tables": tables, "duan_bandit_n10_k5": DUAN_BANDIT,
        "bayes_optimal_prior_expectation": done.get("bandit baselines", {}).get("bayes_optimal_prior_expectation")}
    write_json(RESULTS / "rl_duan.json", results)
    lines = ["# Bandits and tabular MDPs beside the classic algorithms (Duan et al.'s RL² tables, reduced)", "",
             f"`{results['command']}`", "",
             f"Machine: {results['machine']}. Total CPU, baselines and RL² training and evaluation: {cpu:.1f} min.",
             "Cells: mean total reward per trial over the test tasks (seed 0, test split) ± 95 % interval over tasks; "
             "simulated baselines average their runs per task first; RL²'s per-task values are averaged over its "
             "training seeds, whose own means and interval across seeds are listed.", ""]
    bandit = tables.get("bandit-5", {})
    if bandit:
        lines += [f"## Bernoulli bandits, k = 5 arms, n = {PULLS} pulls ({RL2['bandit-5']['tasks']} test tasks)", "",
                  "| policy | total reward (ours) | Duan et al. Table 1 |", "|---|---|---|"]
        quoted = {"random": DUAN_BANDIT["random"], "Bayes-optimal": f"{DUAN_BANDIT['Gittins index']} (Gittins index)",
                  "RL² (fewshot)": f"{DUAN_BANDIT['RL² (Duan et al.)']} (their RL²)"}
        for name, row in bandit.items():
            lines.append(f"| {name} | {fmt(row['mean'], row['ci95'])} | {quoted.get(name, '')} |")
        prior = results["bayes_optimal_prior_expectation"]
        if prior is not None:
            lines += ["", f"Bayes-optimal expected total under the prior (exact, all tasks): {prior:.3f}."]
        lines.append("")
    mdp = tables.get("tabular-mdp", {})
    if mdp:
        lines += [f"## Tabular MDPs, 10 states, 5 actions, horizon 10, n = {EPISODES} episodes "
                  f"({RL2['tabular-mdp']['tasks']} test tasks)", "", "| policy | total reward (ours) |", "|---|---|"]
        for name, row in mdp.items():
            lines.append(f"| {name} | {fmt(row['mean'], row['ci95'])} |")
        lines.append("")
    for family, rows in tables.items():
        row = rows.get("RL² (fewshot)")
        if row:
            lines.append(f"RL² on {family}: per-seed means {row['per_seed']} (± {row['across_seeds_ci95']} across "
                         f"seeds, t-interval), {row['steps']} PPO steps, {row['train_cpu_minutes']} CPU-min, load "
                         f"{row['loadavg']}.")
    (RESULTS / "rl_duan.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
